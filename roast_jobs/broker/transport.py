"""The kombu transport: connection setup, wake-ups, the event loop and leases.

Time in here is the host's monotonic clock only; when a delayed message or a lease is
due comes from the database as "seconds from now", so hosts whose clocks disagree with
the database's neither spin nor oversleep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Iterable
from typing import Any

import psycopg
from kombu.transport import virtual

from .acks import outbox_for
from .channel import Channel
from .connections import (
    CONNECTION_ERRORS,
    conninfo_from_client,
    get_listen_pool,
    get_pool,
    mask_url,
)
from .leases import KeepAlive
from .listener import Listener, Probe, Wakeup
from .maintenance import ensure_schema, run_pass
from .options import BrokerOptions
from .payload import split_tags
from .sql import statements
from .writer import MessageWriter

logger = logging.getLogger(__name__)

#: Longest an ack made in the event loop waits to ride along with a claim.
ACK_DELAY = 0.05
#: The longest the keep-alive thread sleeps; sooner for queues with a short x-expires.
TICK = 1.0


class Transport(virtual.Transport):
    """Celery/kombu transport for PostgreSQL (psycopg 3). See the package docstring."""

    Channel = Channel

    driver_type = "postgresql"  # not 'sql': Celery would switch events off
    driver_name = "psycopg"
    default_port = 5432
    can_parse_url = True  # we read the URL ourselves: libpq and broker options in its query
    polling_interval = None

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )
    connection_errors = (*virtual.Transport.connection_errors, *CONNECTION_ERRORS)
    channel_errors = (
        *virtual.Transport.channel_errors,
        psycopg.ProgrammingError,
        psycopg.DataError,
        psycopg.IntegrityError,
    )

    channels: list[Channel]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        conninfo, url_options = conninfo_from_client(client)
        self.options = BrokerOptions.from_mapping(
            {**url_options, **(client.transport_options or {})}
        )
        self.pool = get_pool(conninfo, self.options)
        self.fast_pool = get_pool(conninfo, self.options, durable=False)
        self.listen_pool = get_listen_pool(conninfo, self.options)
        self.sql = statements(self.options.schema)
        self.notify_channel = self.options.schema
        self.outbox = outbox_for(conninfo, self.options.schema)
        self.writer = MessageWriter(self.sql, self.pool, self.notify_channel)
        self._pid = os.getpid()
        self._listener: Listener | None = None
        self._hub: Any = None
        self._registered_fd: int | None = None
        self._timers: list[Any] = []
        self._wake_entry: Any = None
        self._next_wake: float | None = None
        self._last_poll = time.monotonic()
        self._last_sweep = 0.0
        self._last_renewal = time.monotonic()
        self._keeper: KeepAlive | None = None
        self._flush_entry: Any = None
        # Woken after deliveries made outside the loop's readable phase (see _poke_if).
        self._poke_r: int | None = None
        self._poke_w: int | None = None
        self._poked = False

    # -- connection ------------------------------------------------------------------

    def establish_connection(self) -> Transport:
        ensure_schema(self.pool, self.sql)
        # kombu expects connecting to fail while the server is down: check, even when the
        # schema is known and idle connections are pooled.
        with self.fast_pool.connection() as conn:
            conn.execute(self.sql.ping)
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        if os.getpid() != self._pid:
            # Inherited by a forked child: the sockets, the event loop and the leases
            # belong to the parent. Touch nothing.
            self.channels = []
            self._avail_channels = []
            return
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        self._unregister()
        self._flush_outbox("closing")
        super().close_connection(connection)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri if include_password else mask_url(uri, mask)

    def driver_version(self) -> str:
        return psycopg.__version__

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"port": self.default_port, "hostname": "localhost"}

    # -- consumers -------------------------------------------------------------------

    def consuming(self) -> Iterable[Channel]:
        return [c for c in self.channels if not c.closed and c._consumers]

    def on_consume(self, channel: Channel) -> None:
        """A channel started consuming: make sure wake-ups and the keep-alive run."""
        if self._keeper is None or not self._keeper.is_alive():
            # A weak reference: a transport dropped without being closed stops its thread.
            self._keeper = KeepAlive(weakref.WeakMethod(self.keep_alive))
            self._keeper.start()
        if self._hub is not None:
            self._register_listener()

    # -- keep-alive (a thread: see leases.py) ----------------------------------------

    def keep_alive(self) -> float:
        """Renew leases, consumers and expiring queues, flush stuck acks, run the broker's
        maintenance when due; returns the seconds until the next call."""
        channels = [c for c in list(self.channels) if not c.closed]
        for channel in channels:
            channel.touch_queues()
        now = time.monotonic()
        if now - self._last_renewal >= self.options.renew_every:
            self._last_renewal = now
            self._renew(channels)
        if len(self.outbox):
            self._flush_outbox("retrying")
        if now - self._last_sweep >= self.options.maintenance_interval:
            self._last_sweep = now
            run_pass(self.pool, self.sql, self.options.maintenance_interval)
        touch = [t for c in channels if (t := c.touch_every()) is not None]
        return min([self.options.renew_every, TICK, *touch])

    def _renew(self, channels: list[Channel]) -> None:
        consumers = [name for c in channels for name in c.consumers()]
        if consumers:
            with self.fast_pool.connection() as conn:
                conn.execute(
                    self.sql.keep_consumers,
                    {"consumers": consumers, "ttl": self.options.consumer_ttl},
                )
        for channel in channels:
            if channel._qos is not None:
                channel.renew_held()
        acked = self.outbox.pending()
        if acked and channels:
            # Acked but not yet durable: keep them ours until the ack lands.
            channels[0].renew(acked)

    def send_acks(self) -> None:
        """Send every pending ack of this process's broker (one retry on a fresh
        connection); on failure they stay pending for the next claim or flush."""

        def send(tags: list[str]) -> None:
            with self.fast_pool.connection() as conn:
                conn.execute(self.sql.ack, split_tags(tags))

        try:
            self.outbox.flush(send)
        except CONNECTION_ERRORS:
            self.outbox.flush(send)

    def _flush_outbox(self, why: str) -> None:
        if not len(self.outbox) or os.getpid() != self._pid:
            return
        try:
            self.send_acks()
        except Exception as exc:
            logger.warning(
                "%s %d ack(s) failed (%r); they stay pending", why, len(self.outbox), exc
            )

    def _mark(self, queue: str | None = None) -> None:
        for channel in self.consuming():
            if queue is None or queue in channel._active_queues:
                channel.maybe_more = True

    def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        for w in wakeups:
            if w.delay is not None and w.delay > 0.001:
                self._schedule_wake(w.delay)
            else:
                self._mark(w.queue)

    def ack_deferred(self) -> None:
        """An ack joined the outbox inside the event loop: flush it soon unless a claim
        takes it first."""
        if self._hub is not None and self._flush_entry is None:
            self._flush_entry = self._hub.call_later(ACK_DELAY, self._flush_acks_now)

    def _flush_acks_now(self) -> None:
        self._flush_entry = None
        self._flush_outbox("sending")

    @property
    def defer_acks(self) -> bool:
        # Only inside the worker's event loop, which flushes them within ACK_DELAY.
        return self._hub is not None

    def _service(self) -> int:
        """Claim and deliver for every channel that may have work and has room."""
        delivered = 0
        for channel in self.consuming():
            room = channel.capacity() if channel.maybe_more else 0
            if room < channel.batch_threshold():
                # Under a backlog, wait for room for a batch; the acks made meanwhile go
                # with that claim, or with a flush at most ACK_DELAY later.
                continue
            got, claimed = channel.claim(channel._active_queues, room)
            channel.maybe_more = claimed >= room
            delivered += self._deliver_all(channel, got)
        return delivered

    def _listen(self) -> Listener:
        if self._listener is None:
            # Checked once per process: do notifications sent the way publishes go arrive?
            probe = Probe(self.pool, self.sql.notify_many, self.notify_channel)
            self._listener = Listener(self.listen_pool, self.sql.listen, probe)
        listener = self._listener
        if not listener.connected:
            listener.connect()
            # Wake-ups read while that connect checked delivery: the socket will not
            # turn readable for them again.
            self._on_wakeups(listener.drain())
        return listener

    def _deliver_all(self, channel: Channel, got: list[tuple[str, dict[str, Any]]]) -> int:
        for i, (queue, raw) in enumerate(got):
            callback = self._callbacks.get(queue)
            try:
                if callback is None:
                    raise LookupError(f"no consumer for queue {queue!r}")
                callback(raw)
            except BaseException:
                # Hand back what was claimed but not delivered, then let the error out.
                rest = [
                    r["properties"]["delivery_tag"]
                    for q, r in got[i + (callback is not None) :]
                    if q not in channel._noack_queues
                ]
                if rest:
                    channel.release(rest)
                raise
        return len(got)

    # -- timers: delays, expired leases, the safety poll -----------------------------

    def _schedule_wake(self, delay: float) -> None:
        due = time.monotonic() + delay
        if self._next_wake is not None and self._next_wake <= due + 0.001:
            return
        self._next_wake = due
        if self._hub is not None:
            if self._wake_entry is not None:
                self._wake_entry.cancel()
            self._wake_entry = self._hub.call_later(delay + 0.002, self._on_wake)

    def _on_wake(self) -> None:
        self._next_wake = None
        self._wake_entry = None
        self._mark()
        self._poke_if(self._service())
        self._refresh_next_due()

    def _refresh_next_due(self) -> None:
        dues = [d for d in (c.next_due() for c in self.consuming()) if d is not None]
        if dues:
            self._schedule_wake(max(0.0, min(dues)))

    def _on_poll(self) -> None:
        self._housekeeping()
        self._poke_if(self._service())

    def _housekeeping(self) -> None:
        """Safety net: lost notifications, expired leases."""
        self._last_poll = time.monotonic()
        self._mark()
        self._refresh_next_due()

    # -- the event loop (celery worker) ----------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self._unregister()
        self._hub = loop
        try:
            self._timers = [loop.call_repeatedly(self.options.polling_interval, self._on_poll)]
            loop.on_tick.add(self._on_tick)
            self._register_listener()
            self._poke_r, self._poke_w = os.pipe()
            os.set_blocking(self._poke_r, False)
            os.set_blocking(self._poke_w, False)
            loop.add_reader(self._poke_r, self._on_poked)
        except BaseException:
            # Celery drops a connection that failed here without closing it: leave
            # nothing in the loop (it would keep this transport, and its sockets, alive).
            self._unregister()
            if self._listener is not None:
                self._listener.close()
            raise

    def _poke_if(self, delivered: int) -> None:
        """Messages were delivered outside the loop's readable phase (a tick callback or
        a timer): make the loop go round once more before it blocks.

        Celery's prefork pool hands work to an idle child from its own tick callback,
        which may already have run in this round; without a poke, the task would wait
        in the pool for the next timer (a whole poll interval) with a child idle.
        """
        if delivered and not self._poked and self._poke_w is not None:
            self._poked = True
            with contextlib.suppress(BlockingIOError):
                os.write(self._poke_w, b"!")

    def _on_poked(self) -> None:
        self._poked = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._poke_r, 512):  # type: ignore[arg-type]
                pass

    def _register_listener(self) -> None:
        hub = self._hub
        listener = self._listen()
        fd = listener.fileno()
        if fd != self._registered_fd:
            if self._registered_fd is not None:
                hub.remove_reader(self._registered_fd)
            hub.add_reader(fd, self._on_readable)
            self._registered_fd = fd

    def _unregister(self) -> None:
        hub, self._hub = self._hub, None
        for entry in self._timers:
            entry.cancel()
        self._timers = []
        for entry in (self._wake_entry, self._flush_entry):
            if entry is not None:
                entry.cancel()
        self._wake_entry = self._flush_entry = None
        self._next_wake = None
        poke_r, poke_w = self._poke_r, self._poke_w
        self._poke_r = self._poke_w = None
        self._poked = False
        if hub is not None:
            hub.on_tick.discard(self._on_tick)
            if self._registered_fd is not None:
                hub.remove_reader(self._registered_fd)
                self._registered_fd = None
            if poke_r is not None:
                hub.remove_reader(poke_r)
        for fd in (poke_r, poke_w):
            if fd is not None:
                os.close(fd)

    def _on_tick(self) -> None:
        if self._listener is None or not self._listener.connected:
            # Lost with the server: reconnect (raising a connection error if it is still
            # down, which makes Celery reconnect) and assume notifications were missed.
            self._registered_fd = None
            self._register_listener()
            self._mark()
        self._poke_if(self._service())

    def _on_readable(self) -> None:
        assert self._listener is not None
        try:
            wakeups = self._listener.drain()
        except CONNECTION_ERRORS:
            if self._hub is not None and self._registered_fd is not None:
                self._hub.remove_reader(self._registered_fd)
            self._registered_fd = None
            raise
        self._on_wakeups(wakeups)
        self._service()

    # -- blocking consumption (kombu Connection.drain_events) -------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver at least one message, waiting on LISTEN up to ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._listen()
        while True:
            if self._next_wake is not None and self._next_wake <= time.monotonic():
                self._next_wake = None
                self._mark()
                if self._service():
                    return
                self._refresh_next_due()
            elif self._service():
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError()
            since_poll = now - self._last_poll
            wait = max(0.0, self.options.polling_interval - since_poll)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self._next_wake is not None:
                wait = min(wait, max(0.0, self._next_wake - time.monotonic()))
            wakeups = listener.wait(wait)
            if wakeups:
                self._on_wakeups(wakeups)
            elif time.monotonic() - self._last_poll >= self.options.polling_interval:
                self._housekeeping()
