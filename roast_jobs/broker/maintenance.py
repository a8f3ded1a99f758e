"""Schema creation and the maintenance pass, each safe with many workers at once.

There is one pass. The transport's keep-alive thread runs it every
``maintenance_interval`` (the broker's steps); the job layer's workers run the same pass
with their retention steps added. One advisory lock (a session lock of the one connection
that runs the pass) keeps it to one process at a time; each step is its own transaction,
so no step holds row locks while another waits for them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import psycopg

from .connections import Pool
from .sql import SCHEMA_VERSION, Statements

logger = logging.getLogger(__name__)

_ready: set[tuple[str, str]] = set()
_ready_lock = threading.Lock()


def ensure_schema(pool: Pool, sql: Statements) -> None:
    """Create the broker's tables once; concurrent starters wait on one advisory lock."""
    key = (pool.conninfo, sql.schema)
    if key in _ready:
        return
    with _ready_lock, pool.connection() as conn:
        if key in _ready:
            return
        version = _current_version(conn, sql)
        if version is None or version < SCHEMA_VERSION:
            # The DDL is idempotent: it creates what is missing and upgrades older versions.
            with conn.transaction():
                conn.execute(sql.lock_schema, {"schema": sql.schema})
                conn.execute(sql.ddl)
            version = _current_version(conn, sql)
        if version is not None and version > SCHEMA_VERSION:
            raise RuntimeError(
                f"broker schema {sql.schema!r} is at version {version}, newer than this "
                f"roast-jobs ({SCHEMA_VERSION}): upgrade roast-jobs"
            )
        _ready.add(key)


def _current_version(conn: psycopg.Connection, sql: Statements) -> int | None:
    try:
        with conn.transaction():
            row = conn.execute(sql.current_version).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.errors.InvalidSchemaName:
        return None
    return int(row[0]) if row and row[0] else None


def forget_schema(schema: str) -> None:
    """Tell this process the schema is gone (tests drop it between runs)."""
    for key in [k for k in _ready if k[1] == schema]:
        _ready.discard(key)


#: Every step of a pass is its own short transaction, bounded so that none can hang: a
#: lock it cannot get soon is left for the next pass.
STEP_TIMEOUT = "60s"
STEP_LOCK_TIMEOUT = "5s"

#: One step of the pass: a name for the report, and what it runs on the pass's connection
#: inside the step's transaction (how many rows it removed or changed).
Step = tuple[str, Callable[[psycopg.Connection], int]]


def broker_steps(sql: Statements) -> list[Step]:
    def count(statement: str) -> Callable[[psycopg.Connection], int]:
        return lambda conn: int(conn.execute(statement).fetchone()[0])  # type: ignore[index]

    return [
        ("leases_reclaimed", count(sql.reclaim_leases)),
        ("messages_expired", count(sql.sweep_messages)),
        ("consumers_gone", count(sql.sweep_consumers)),
        ("queues_removed", count(sql.sweep_queues)),
    ]


def run_pass(
    pool: Pool, sql: Statements, interval: float = 0.0, extra: Sequence[Step] = ()
) -> dict[str, int] | None:
    """The maintenance pass: the broker's steps, then ``extra`` (the job layer's
    retention), one process at a time cluster-wide, all on one connection.

    ``interval`` > 0 skips the pass if one ran within that many seconds. Returns what
    each step removed, or None when another process holds the lock or ran recently.
    """
    with pool.connection() as conn:
        got = conn.execute(sql.maintenance_lock, {"schema": sql.schema}).fetchone()
        if not got or not got[0]:
            return None
        try:
            if interval > 0:
                due = conn.execute(sql.maintenance_due, {"interval": interval}).fetchone()
                if not due or not due[0]:
                    return None
            report = {name: _step(conn, name, run) for name, run in [*broker_steps(sql), *extra]}
            conn.execute(sql.maintenance_done, {"value": json.dumps(report)})
        finally:
            with suppress(psycopg.Error):
                conn.execute(sql.maintenance_unlock, {"schema": sql.schema})
    if any(report.values()):
        logger.info("maintenance: %s", report)
    return report


def _step(conn: psycopg.Connection, name: str, run: Callable[[psycopg.Connection], int]) -> int:
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL statement_timeout = '{STEP_TIMEOUT}'")
            conn.execute(f"SET LOCAL lock_timeout = '{STEP_LOCK_TIMEOUT}'")
            return run(conn)
    except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
        logger.warning("maintenance step %s gave up (%s); the next pass tries again", name, exc)
        return 0


def last_pass(pool: Pool, sql: Statements) -> tuple[dict[str, int], Any] | None:
    """What the last pass removed, and when it ran; None if none ran yet."""
    with pool.connection() as conn:
        row = conn.execute(sql.maintenance_last).fetchone()
    if not row:
        return None
    try:
        report = json.loads(row[0])
    except (TypeError, ValueError):
        report = {}
    return report, row[1]
