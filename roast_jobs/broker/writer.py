"""Writing many messages at once: COPY where it can, one multi-row INSERT where it must.

Plain messages to a queue (no singleton key, not a retry, no per-queue TTL) go by COPY,
several times faster than an INSERT of the same rows; the rest, which need routing
through bindings or the singleton index, go through ``publish_many``. Either way one
transaction: the caller's, or one on the durable pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from itertools import chain, islice

from .capture import PsycopgSink, Published, Row, Sink
from .connections import Pool
from .sql import Statements

#: Rows per statement on the INSERT path.
INSERT_CHUNK = 5000
#: Below this many rows COPY's extra round trips do not pay.
COPY_THRESHOLD = 50
#: Rows per write into the COPY stream.
COPY_CHUNK = 1000
#: COPY's text format: NULL, and the characters it escapes.
NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    return (
        value.translate(_ESCAPES)
        if ("\\" in value or "\t" in value or "\n" in value or "\r" in value)
        else value
    )


class MessageWriter:
    """Writes messages of one broker (its statements, durable pool and NOTIFY channel)."""

    def __init__(self, sql: Statements, pool: Pool, notify_channel: str) -> None:
        self.sql = sql
        self.pool = pool
        self.notify_channel = notify_channel

    @contextmanager
    def _sink(self, sink: Sink | None) -> Iterator[Sink]:
        if sink is not None:
            yield sink
            return
        with self.pool.connection() as conn, conn.transaction():
            yield PsycopgSink(conn)

    def write(self, rows: Iterable[Row], sink: Sink | None) -> list[Published]:
        """Write ``rows`` (any iterable: a generator is consumed while COPY streams, so
        the server stores one chunk while the next is being built); what became of
        each, in order."""
        it = iter(rows)
        head = list(islice(it, COPY_THRESHOLD))
        with self._sink(sink) as s:
            conn = s.copy_connection() if len(head) >= COPY_THRESHOLD else None
            if conn is None:
                return self._insert_all([*head, *it], s)
            # Queues first seen after the head are not checked for a TTL: their rows take
            # the INSERT path, which applies it.
            queues = sorted({r.routing_key for r in head if not r.exchange})
            with_ttl = {r[0] for r in s.execute(self.sql.queues_with_ttl, {"queues": queues})}
            copyable = set(queues) - with_ttl
            fate: dict[int, Published] = {}
            later: list[tuple[int, Row]] = []
            now: datetime = s.execute(self.sql.now, {})[0][0]
            due: dict[str, datetime] = {}
            now_text = now.isoformat()
            with conn.cursor().copy(self.sql.copy_messages) as copy:
                lines: list[str] = []
                for i, r in enumerate(chain(head, it)):
                    env = r.envelope
                    if (
                        r.exchange
                        or r.routing_key not in copyable
                        or env.singleton_key is not None
                        or env.retried
                    ):
                        later.append((i, r))
                        continue
                    when = env.eta or now
                    if r.routing_key not in due or when < due[r.routing_key]:
                        due[r.routing_key] = when
                    lines.append(
                        f"{_text(r.routing_key)}\t{env.priority}\t"
                        f"{env.eta.isoformat() if env.eta else now_text}\t"
                        f"{env.expires.isoformat() if env.expires else NULL}\t"
                        f"{_text(env.task_id) if env.task_id is not None else NULL}\t"
                        f"{_text(env.payload)}\n"
                    )
                    fate[i] = Published(env.task_id, True, queues=(r.routing_key,))
                    if len(lines) >= COPY_CHUNK:
                        copy.write("".join(lines))
                        lines = []
                if lines:
                    copy.write("".join(lines))
            if due:
                # Due times as delays from the database's own now (see listener.Wakeup).
                notes = [
                    q if when <= now else f"{q}\x1f{(when - now).total_seconds()}"
                    for q, when in sorted(due.items())
                ]
                s.execute(self.sql.notify_many, {"channel": self.notify_channel, "notes": notes})
            if later:
                done = self._insert_all([r for _, r in later], s)
                fate.update(zip([i for i, _ in later], done, strict=True))
        return [fate[i] for i in range(len(fate))]

    def _insert_all(self, rows: list[Row], sink: Sink) -> list[Published]:
        if (
            len(rows) == 1
            and rows[0].envelope.singleton_key is None
            and not rows[0].envelope.retried
        ):
            return [self.insert_one(rows[0], sink)]
        out: list[Published] = []
        for start in range(0, len(rows), INSERT_CHUNK):
            out.extend(self._insert(rows[start : start + INSERT_CHUNK], sink))
        return out

    def insert_one(self, row: Row, sink: Sink) -> Published:
        """One plain message: the transport's own single-row statements, a tenth of the
        cost of planning ``publish_many`` for one row."""
        env = row.envelope
        columns = {
            "priority": env.priority,
            "eta": env.eta,
            "expires": env.expires,
            "task_id": env.task_id,
            "payload": env.payload,
            "channel": self.notify_channel,
        }
        if row.exchange:
            queues = sink.execute(
                self.sql.publish_exchange,
                {"exchange": row.exchange, "routing_key": row.routing_key, **columns},
            )
            return Published(env.task_id, bool(queues), queues=tuple(q[0] for q in queues))
        sink.execute(self.sql.publish, {"queue": row.routing_key, **columns})
        return Published(env.task_id, True, queues=(row.routing_key,))

    def _insert(self, rows: list[Row], sink: Sink) -> list[Published]:
        params = {
            "exchanges": [r.exchange for r in rows],
            "routing_keys": [r.routing_key for r in rows],
            "priorities": [r.envelope.priority for r in rows],
            "etas": [r.envelope.eta for r in rows],
            "expires": [r.envelope.expires for r in rows],
            "task_ids": [r.envelope.task_id for r in rows],
            "singleton_keys": [r.envelope.singleton_key for r in rows],
            "retried": [r.envelope.retried for r in rows],
            "payloads": [r.envelope.payload for r in rows],
            "channel": self.notify_channel,
        }
        written: dict[str | None, list[str]] = {}
        for _id, queue, task_id, _key, _woken in sink.execute(self.sql.publish_many, params):
            written.setdefault(task_id, []).append(queue)
        dropped = [r for r in rows if r.envelope.task_id not in written]
        holders: dict[str, str] = {}
        keys = sorted({r.envelope.singleton_key for r in dropped if r.envelope.singleton_key})
        if keys:
            for queue, key, task_id, _id in sink.execute(
                self.sql.singleton_holders, {"keys": keys}
            ):
                holders.setdefault(key, task_id)
                holders.setdefault(f"{queue}\x1f{key}", task_id)
        out = []
        for r in rows:
            env = r.envelope
            if env.task_id in written:
                out.append(Published(env.task_id, True, queues=tuple(written[env.task_id])))
                continue
            key = env.singleton_key or ""
            holder = holders.get(f"{r.routing_key}\x1f{key}") or holders.get(key)
            out.append(Published(env.task_id, False, holder=holder))
        return out
