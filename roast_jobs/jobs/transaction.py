"""Enqueue inside the caller's database transaction.

    with Session(engine) as session, session.begin():
        session.add(Evaluation(...))
        with enqueue_in(session):
            evaluate.delay(evaluation_id)   # the message row joins the session's transaction

The message exists only if the transaction commits; workers are woken at commit (NOTIFY
is transactional) and cannot see it before; a rollback leaves no trace. Any Celery task
works, unchanged. The connection must be to the broker's database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from roast_jobs.broker.capture import PsycopgSink, PublishTarget, Sink, publishing

T = TypeVar("T")


class SQLAlchemySink:
    """A SQLAlchemy Connection, or a Session (asked for its connection at each use, so
    that the statement joins whatever transaction the session has open)."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def _conn(self) -> Any:
        conn = self.target.connection() if hasattr(self.target, "get_bind") else self.target
        if conn.dialect.name != "postgresql":
            raise TypeError(f"enqueue_in() needs a PostgreSQL connection, not {conn.dialect.name}")
        return conn

    def execute(self, statement: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        result = self._conn().exec_driver_sql(statement, params)
        return [tuple(row) for row in result.fetchall()] if result.returns_rows else []

    def copy_connection(self) -> psycopg.Connection | None:
        driver = self._conn().connection.driver_connection
        return driver if isinstance(driver, psycopg.Connection) else None


def sink_for(target: Any) -> Sink:
    """The broker's way into ``target``'s transaction: a SQLAlchemy ``Session`` or
    ``Connection`` (psycopg or another PostgreSQL driver with pyformat parameters, such
    as psycopg2) or a psycopg ``Connection``."""
    if isinstance(target, psycopg.Connection):
        return PsycopgSink(target)
    from sqlalchemy.engine import Connection
    from sqlalchemy.orm import Session

    if isinstance(target, Session | Connection):
        return SQLAlchemySink(target)
    raise TypeError(
        "enqueue_in() takes a SQLAlchemy Session or Connection or a psycopg Connection, "
        f"not {type(target).__name__}"
    )


@contextmanager
def enqueue_in(target: Any, buffered: bool = False) -> Iterator[PublishTarget]:
    """Publish this thread's tasks inside ``target``'s transaction (see the module doc).

    With ``buffered``, the tasks sent in the block are written in one statement when it
    ends (still inside the transaction); ``.results`` then tells what became of each.
    """
    with publishing(sink=sink_for(target), buffered=buffered) as publish_target:
        yield publish_target


def ack_in(target: Any, task_id: str, app: Any) -> int:
    """End the running delivery of ``task_id`` (the task's own ``request.id``) inside
    ``target``'s transaction; returns how many rows went (0: gone already). Celery does
    not tell a task its delivery tag, so the delivery is found as the task id's leased
    row: a waiting message of the same id (its retry, sent just now) stays.

    With a retry sent in the same transaction (``enqueue_in``), the retry and the end of
    this delivery commit together: a worker killed before its own (late) ack cannot have
    this delivery run again next to the retry. That ack then finds nothing to do."""
    from roast_jobs.broker.sql.jobs import job_statements

    with app.connection_for_write() as conn:  # makes no connection: only its schema
        statement = job_statements(conn.transport.options.schema).end_leased
    return len(sink_for(target).execute(statement, {"task_id": task_id}))


async def enqueue_in_async(target: Any, send: Callable[[], T]) -> T:
    """``enqueue_in`` for SQLAlchemy's ``AsyncSession`` / ``AsyncConnection``: runs
    ``send`` (which calls ``apply_async``, ``JobManager.send``, ...) inside ``target``'s
    transaction and returns what it returns. Celery publishes synchronously, so this
    goes through SQLAlchemy's ``run_sync`` (the ``asyncio`` extra: greenlet)::

        async with AsyncSession(engine) as session, session.begin():
            session.add(evaluation)
            await enqueue_in_async(session, lambda: evaluate.delay(evaluation.id))
    """

    def run(sync_target: Any) -> T:
        with enqueue_in(sync_target):
            return send()

    return await target.run_sync(run)
