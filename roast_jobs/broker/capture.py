"""Where a publish goes: the transport's own connection (the default), the caller's open
transaction, or a buffer written in one statement when the block ends.

Celery publishes synchronously in the caller's thread, so a context variable set around
``task.apply_async()`` reaches the channel that writes the row, with no change to the
task or to Celery::

    with publishing(sink=my_transaction):
        add.delay(2, 2)          # INSERTed on my connection, in my transaction

    with publishing(buffered=True) as batch:
        for doc in docs:
            evaluate.delay(doc)  # collected
    batch.results                # one statement wrote them all
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from .payload import Envelope


class Sink(Protocol):
    """The caller's open transaction, as the broker writes into it."""

    def execute(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement (psycopg named parameters); its rows."""
        ...

    def copy_connection(self) -> psycopg.Connection | None:
        """The psycopg connection under the transaction, for COPY; None if there is none
        (another driver): bulk writes then use multi-row INSERTs."""
        ...


class PsycopgSink:
    """A psycopg connection's open transaction as a Sink."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(statement, params)
        return cur.fetchall() if cur.description else []

    def copy_connection(self) -> psycopg.Connection | None:
        return self.conn


@dataclass(slots=True)
class Row:
    """One message on its way to the table."""

    exchange: str
    routing_key: str
    envelope: Envelope
    message: dict[str, Any] | None = None


@dataclass(slots=True)
class Published:
    """What became of one sent message."""

    task_id: str | None
    #: False when the singleton key was held: nothing was written.
    created: bool
    #: The task id of the message holding the key (``created`` False), when still there.
    holder: str | None = None
    queues: tuple[str, ...] = ()


Writer = Callable[[Iterable[Row], Sink | None], list[Published]]


@dataclass
class PublishTarget:
    sink: Sink | None = None
    buffered: bool = False
    pending: list[Row] = field(default_factory=list)
    results: list[Published] = field(default_factory=list)
    #: Set by the first channel that publishes into this target.
    writer: Writer | None = None

    def add(self, row: Row, writer: Writer) -> None:
        self.writer = self.writer or writer
        if self.buffered:
            self.pending.append(row)
        else:
            self.results.extend(writer([row], self.sink))

    def flush(self) -> list[Published]:
        rows, self.pending = self.pending, []
        if not rows:
            return []
        if self.writer is None:
            raise RuntimeError("no channel has published into this target")
        done = self.writer(rows, self.sink)
        self.results.extend(done)
        return done


_target: ContextVar[PublishTarget | None] = ContextVar("roast_jobs_publish_target", default=None)


def current_target() -> PublishTarget | None:
    return _target.get()


@contextmanager
def publishing(sink: Sink | None = None, buffered: bool = False) -> Iterator[PublishTarget]:
    """Route this thread's publishes to ``sink`` (None: the transport's own connection);
    with ``buffered``, collect them and write them in one statement when the block ends
    without an error."""
    target = PublishTarget(sink=sink, buffered=buffered)
    token = _target.set(target)
    try:
        yield target
    finally:
        _target.reset(token)
    target.flush()
