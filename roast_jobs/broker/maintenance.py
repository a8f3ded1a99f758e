"""Schema creation and the periodic sweep, each safe with many workers at once."""

from __future__ import annotations

import logging
import threading

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


def sweep(pool: Pool, sql: Statements, interval: float) -> dict[str, int] | None:
    """Drop expired messages and abandoned queues, if nobody did within ``interval``.

    Returns what was removed, or None when another process holds the lock or ran recently.
    """
    with pool.connection() as conn, conn.transaction():
        got = conn.execute(sql.maintenance_lock, {"schema": sql.schema}).fetchone()
        if not got or not got[0]:
            return None
        due = conn.execute(sql.maintenance_due, {"interval": interval}).fetchone()
        if not due or not due[0]:
            return None
        messages = conn.execute(sql.sweep_messages).fetchone()[0]
        queues = conn.execute(sql.sweep_queues).fetchone()[0]
        conn.execute(sql.maintenance_done, {"value": f"messages={messages} queues={queues}"})
    if messages or queues:
        logger.info("broker sweep removed %d expired message(s), %d queue(s)", messages, queues)
    return {"messages": messages, "queues": queues}
