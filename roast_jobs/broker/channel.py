"""The kombu channel: AMQP queue semantics over the broker tables."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments

from .acks import AckOutbox
from .capture import PsycopgSink, Published, Row, Sink, current_target
from .connections import CONNECTION_ERRORS
from .payload import BadPayload, decode, delivery_tag, envelope, split_tags
from .sql import PRIORITIES

if TYPE_CHECKING:
    from .transport import Transport

logger = logging.getLogger(__name__)

#: Claim at most this many at once when the consumer set no prefetch limit.
UNLIMITED_BATCH = 100


class QoS(virtual.QoS):
    """Prefetch accounting in memory; acks, rejects and restores go to the database."""

    channel: Channel

    def held(self) -> list[str]:
        """Delivery tags this channel holds unacked right now."""
        for _ in range(3):
            try:
                dirty = self._dirty
                return [tag for tag in list(self._delivered) if tag not in dirty]
            except RuntimeError:  # changed size under us (ack from another thread)
                continue
        return []

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        # The row stays in the table; no copy is published (unlike kombu's default).
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        if not tags or os.getpid() != self.channel.pid:
            return []
        try:
            self.channel.release(tags)
        except Exception as exc:
            logger.warning(
                "could not hand %d message(s) back (%r); they return when their lease ends",
                len(tags),
                exc,
            )
        return []


class Channel(virtual.Channel):
    QoS = QoS
    supports_fanout = True
    connection: Transport | None
    transport: Transport

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        # kombu sets ``self.connection`` to None when the channel closes, but a task that
        # finishes later still acks through it: keep our own reference for the database.
        self.transport = connection
        self.pid = os.getpid()
        self.owner = f"{socket.gethostname()}/{self.pid}/{uuid.uuid4().hex[:8]}"
        self._noack_queues: set[str] = set()
        #: This channel's consumers as the ``consumer`` table names them, by queue.
        self._registered: dict[str, str] = {}
        #: Queues with x-expires: name -> seconds; touched well before they could expire.
        self._expiring: dict[str, float] = {}
        self._last_touch = 0.0
        #: Set when a notification, a full batch or a timer says messages may be waiting.
        self.maybe_more = True
        #: Acks not yet durable, shared by the process's channels of this broker.
        self.acks: AckOutbox = connection.outbox
        self._registry_lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------

    @property
    def sql(self):
        return self.transport.sql

    def _fetch(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.transport.fast_pool.connection() as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def _run(self, statement: str, **params: Any) -> int:
        with self.transport.fast_pool.connection() as conn:
            return conn.execute(statement, params).rowcount

    def _insert(self, statement: str, **params: Any) -> None:
        # New messages, queues and bindings must survive a server crash: durable pool.
        with self.transport.pool.connection() as conn:
            conn.execute(statement, params)

    # -- publishing ------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._publish("", queue, message)

    def basic_publish(
        self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any
    ) -> None:
        self._inplace_augment_message(message, exchange, routing_key)
        self._publish(exchange or "", routing_key or "", message)

    def _publish(self, exchange: str, routing_key: str, message: dict[str, Any]) -> None:
        env = envelope(message, self.transport.options.native_delay)
        target = current_target()
        if target is not None:
            target.add(Row(exchange, routing_key, env, message), self.write_rows)
        elif env.singleton_key is not None or env.retried:
            self.write_rows([Row(exchange, routing_key, env)], None)
        else:
            # The hot path: one autocommit statement on the durable pool.
            with self.transport.pool.connection() as conn:
                self.transport.writer.insert_one(Row(exchange, routing_key, env), PsycopgSink(conn))

    def write_rows(self, rows: Iterable[Row], sink: Sink | None) -> list[Published]:
        """Write ``rows`` in the caller's transaction (``sink``) or on the durable pool;
        what became of each, in order."""
        return self.transport.writer.write(rows, sink)

    # -- queues, exchanges, bindings -------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        args = kwargs.get("arguments") or {}
        ttl = args.get("x-message-ttl")
        expires = args.get("x-expires")
        auto_delete = bool(kwargs.get("auto_delete"))
        self._insert(
            self.sql.declare_queue,
            queue=queue,
            message_ttl=float(ttl) / 1000 if ttl is not None else None,
            expires=float(expires) / 1000 if expires is not None else None,
            auto_delete=auto_delete,
        )
        if expires is not None:
            self._expiring[queue] = float(expires) / 1000

    def prepare_queue_arguments(self, arguments: dict[str, Any] | None, **kwargs: Any):
        # Turn kombu's expires/message_ttl into x-expires/x-message-ttl, as for RabbitMQ.
        return to_rabbitmq_queue_arguments(arguments or {}, **kwargs)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self._fetch(self.sql.has_queue, queue=queue)[0][0])

    def _size(self, queue: str) -> int:
        return int(self._fetch(self.sql.size, queue=queue)[0][0])

    def _purge(self, queue: str) -> int:
        return int(self._fetch(self.sql.purge, queue=queue)[0][0])

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        if if_empty and self._size(queue):
            return
        self._run(self.sql.delete_queue, queue=queue)
        self.state.queue_bindings_delete(queue)
        self._registered.pop(queue, None)
        self._expiring.pop(queue, None)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        kind = self.typeof(exchange).type
        self._insert(
            self.sql.bind,
            exchange=exchange,
            queue=queue,
            routing_key=routing_key or "",
            kind=kind if kind in ("direct", "topic", "fanout") else "direct",
            regex=pattern if kind == "topic" else None,
        )

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        self.state.binding_delete(queue, exchange, routing_key)
        self._run(
            self.sql.unbind, exchange=exchange or "", queue=queue, routing_key=routing_key or ""
        )

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        rows = self._fetch(self.sql.bindings_of, exchange=exchange)
        return [(r[0], r[1], r[2]) for r in rows]

    # -- consuming -------------------------------------------------------------------

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> None:
        if no_ack:
            self._noack_queues.add(queue)
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if queue not in self._registered:
            consumer = f"{self.owner}/{consumer_tag}"
            self._run(
                self.sql.add_consumer,
                queue=queue,
                consumer=consumer,
                ttl=self.transport.options.consumer_ttl,
            )
            with self._registry_lock:
                self._registered[queue] = consumer
        self.maybe_more = True
        self.transport.on_consume(self)

    def basic_cancel(self, consumer_tag: str) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue is None or queue in self._active_queues:
            return
        self._noack_queues.discard(queue)
        with self._registry_lock:
            consumer = self._registered.pop(queue, None)
        if consumer is not None and not self.closed_for_fork:
            try:
                self._remove_consumer(queue, consumer)
            except Exception as exc:  # it lapses by itself when we stop renewing it
                logger.debug("could not unregister consumer of %s: %r", queue, exc)

    def _remove_consumer(self, queue: str, consumer: str) -> None:
        """Unregister; an auto_delete queue goes with its last consumer, in any process."""
        with self.transport.pool.connection() as conn, conn.transaction():
            conn.execute(self.sql.lock_queue, {"queue": queue})
            deleted = conn.execute(
                self.sql.remove_consumer, {"queue": queue, "consumer": consumer}
            ).fetchone()
        if deleted and deleted[0]:
            self.state.queue_bindings_delete(queue)
            self._expiring.pop(queue, None)

    def consumers(self) -> list[str]:
        """This channel's consumer names (kept alive by the lease keeper)."""
        with self._registry_lock:
            return list(self._registered.values())

    @property
    def closed_for_fork(self) -> bool:
        return os.getpid() != self.pid

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        while True:
            got, claimed = self.claim([queue], 1, noack=no_ack)
            if got or not claimed:  # a delivery, or an empty queue
                break
            # The row claimed was garbage or poison (now a dead letter): try the next one.
        if not got:
            return None
        _, raw = got[0]
        message = self.Message(raw, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def capacity(self) -> int:
        if not self._consumers:
            return 0
        estimate = self.qos.can_consume_max_estimate()
        return UNLIMITED_BATCH if estimate is None else estimate

    def batch_threshold(self) -> int:
        """Claim once this much room is free (half the prefetch), or when holding nothing.

        One round trip then fetches several messages and carries the acks of the tasks
        that made room, instead of a claim and an ack per task.
        """
        prefetch = self.qos.prefetch_count
        if not prefetch or not self.qos.held():
            return 1
        return max(1, prefetch // 2)

    def claim(
        self, queues: Sequence[str], limit: int, noack: bool | None = None
    ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
        """Claim up to ``limit`` messages from ``queues``.

        Returns the (queue, kombu message) pairs to deliver and how many rows were
        claimed, garbage and poison included: fewer than ``limit`` means the queues ran
        dry.
        """
        if limit <= 0 or not queues:
            return [], 0
        groups: list[tuple[list[str], bool]]
        if noack is None:
            acked = [q for q in queues if q not in self._noack_queues]
            unacked = [q for q in queues if q in self._noack_queues]
            groups = [(g, flag) for g, flag in ((acked, False), (unacked, True)) if g]
        else:
            groups = [(list(queues), noack)]
        rows: list[tuple[Any, ...]] = []
        for group, flag in groups:
            want = limit - len(rows)
            if want <= 0:
                break
            rows.extend(self._claim_rows(group, want, flag))
        out: list[tuple[str, dict[str, Any]]] = []
        bad: list[tuple[int, int, str, int, str, str]] = []
        delivered = sorted((r for r in rows if r[5] is not None), key=lambda r: r[0])
        for _ord, row_id, receipt, queue, count, payload, created in delivered:
            try:
                out.append((queue, decode(payload, row_id, receipt, count, created)))
            except BadPayload as exc:
                bad.append((row_id, receipt, queue, count, payload, str(exc)))
        for row_id, receipt, queue, count, payload, reason in bad:
            self._bury_bad(row_id, receipt, queue, count, payload, reason)
        return out, len(rows)

    def _claim_rows(self, queues: list[str], limit: int, noack: bool) -> list[tuple[Any, ...]]:
        pairs = [(q, p) for p in PRIORITIES for q in queues]
        params: dict[str, Any] = {
            "queues": [q for q, _ in pairs],
            "prios": [p for _, p in pairs],
            "limit": limit,
        }
        if noack:
            return self._fetch(self.sql.claim_noack, **params)
        opts = self.transport.options
        # Pending acks ride along; they are forgotten only once this statement commits.
        acks = self.acks.take()
        tags = split_tags(acks)
        try:
            rows = self._fetch(
                self.sql.claim,
                owner=self.owner,
                lease=opts.lease_seconds,
                max_deliveries=opts.max_deliveries,
                ack_ids=tags["ids"],
                ack_receipts=tags["receipts"],
                **params,
            )
        except BaseException:
            self.acks.release(acks)
            raise
        self.acks.done(acks)
        return rows

    def _bury_bad(
        self, row_id: int, receipt: int, queue: str, count: int, payload: str, reason: str
    ) -> None:
        logger.error("message %s in queue %r moved to dead letters: %s", row_id, queue, reason)
        if queue in self._noack_queues:  # already deleted by the claim
            self._run(
                self.sql.bury_row,
                id=row_id,
                queue=queue,
                delivery_count=count,
                payload=payload,
                reason=reason,
            )
        else:
            tags = split_tags([delivery_tag(row_id, receipt)])
            self._run(self.sql.bury, reason=reason, **tags)

    def next_due(self) -> float | None:
        """Seconds (on the database's clock) until a message of our queues next becomes
        claimable; None when none is delayed or leased."""
        queues = list(self._active_queues)
        if not queues:
            return None
        pairs = [(q, p) for p in PRIORITIES for q in queues]
        rows = self._fetch(
            self.sql.next_due, queues=[q for q, _ in pairs], prios=[p for _, p in pairs]
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    def touch_every(self) -> float | None:
        """How often our consumed expiring queues need touching; None when there are none."""
        periods = [self._expiring[q] for q in self._active_queues if q in self._expiring]
        return max(0.05, min(periods) / 3) if periods else None

    def touch_queues(self) -> None:
        """Keep the queues with x-expires that we consume alive (RabbitMQ: a queue with a
        consumer never expires), touching each at least three times per expiry period."""
        alive = [q for q in self._active_queues if q in self._expiring]
        every = self.touch_every()
        now = time.monotonic()
        if not alive or every is None or now - self._last_touch < every:
            return
        self._last_touch = now
        self._run(self.sql.touch_queues, queues=alive)

    # -- acks ------------------------------------------------------------------------

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        # The outbox owns the ack from here (QoS forgets it): it is renewed until durable,
        # never handed back as unacked.
        self.acks.add(delivery_tag)
        self.qos.ack(delivery_tag)
        if self.transport.defer_acks:
            # In the worker's event loop: sent with the next claim, or flushed at most
            # ACK_DELAY later. A crash before that only means the message comes again.
            self.transport.ack_deferred()
        else:
            self.flush_acks()

    def flush_acks(self) -> None:
        self.transport.send_acks()

    def basic_reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        tags = split_tags([delivery_tag])
        if requeue:
            self._with_retry(self.sql.requeue, channel=self.transport.notify_channel, **tags)
        else:
            # No exchange to dead-letter to in kombu: keep it, like RabbitMQ with a DLX.
            self._with_retry(self.sql.bury, reason="rejected", **tags)
        self.qos.reject(delivery_tag, requeue=requeue)

    def release(self, tags: list[Any]) -> None:
        self._fetch(self.sql.release, channel=self.transport.notify_channel, **split_tags(tags))

    def renew_held(self) -> None:
        """Extend the leases of the messages this channel holds unacked."""
        held = self.qos.held()
        if not held:
            return
        kept = self.renew(held)
        # Acked meanwhile, or lost to another consumer after an outage.
        lost = [t for t in held if t not in kept and t in self.qos.held()]
        if lost:
            logger.warning(
                "lost the lease of %d message(s) (tags %s): they may run again elsewhere",
                len(lost),
                lost[:10],
            )

    def renew(self, tags: list[Any]) -> set[str]:
        """Extend the leases of these deliveries; the tags still held."""
        rows = self._fetch(
            self.sql.renew, lease=self.transport.options.lease_seconds, **split_tags(tags)
        )
        return {delivery_tag(r[0], r[1]) for r in rows}

    def _with_retry(self, statement: str, **params: Any) -> None:
        # Idempotent per delivery: one retry on a fresh connection rides over a server
        # restart or a killed backend.
        try:
            self._fetch(statement, **params)
        except CONNECTION_ERRORS:
            self._fetch(statement, **params)
