"""Celery's database result backend, kept in its own schema of the app's PostgreSQL.

Three columns are added to Celery's task table, written when a task starts, so that the
job-state API can say when a job was sent and started and re-send it as it was:
``date_created`` (when the broker first stored the message), ``date_started`` and
``options`` (how it was sent: ``retry.stored_options``).

Its sessions run in UTC, so that Celery's ``date_done`` (a ``timestamp without time
zone``) holds UTC whatever the server's ``TimeZone``; see ``sql``. The statements are in
``sql``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend
from sqlalchemy import create_engine, event
from sqlalchemy.orm import object_session
from sqlalchemy.pool import NullPool

from roast_jobs.broker.payload import SENT_AT

from .retry import options_of_request
from .sql import (
    EXTRA_COLUMNS,
    SET_UTC,
    SETUP_LOCK,
    create_schema,
    qualified_name,
    result_statements,
)

__all__ = ["EXTRA_COLUMNS", "ResultBackend", "qualified_name", "sqlalchemy_url"]

_ready: set[tuple[str, frozenset[str]]] = set()
_lock = threading.Lock()


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://...`` as a SQLAlchemy URL on psycopg 3, without broker options."""
    from roast_jobs.broker.connections import split_url

    libpq, _ = split_url(database_url)
    return "postgresql+psycopg://" + libpq.split("://", 1)[1]


def _once(url: str, key: frozenset[str], statements: Callable[[], list[str]]) -> None:
    """Run ``statements`` once per process and ``key``, under a cluster-wide lock: workers
    starting together would race on CREATE SCHEMA / ALTER TABLE ... IF NOT EXISTS."""
    if (url, key) in _ready:
        return
    with _lock:
        if (url, key) in _ready:
            return
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(SETUP_LOCK)
                for statement in statements():
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()
        _ready.add((url, key))


def ensure_schemas(url: str, schemas: set[str]) -> None:
    if schemas:
        _once(url, frozenset(schemas), lambda: [create_schema(s) for s in sorted(schemas)])


def ensure_columns(url: str, table: Any) -> None:
    """Add roast-jobs' columns to Celery's task table."""
    name = qualified_name(table)
    _once(url, frozenset({name}), lambda: [result_statements(name).add_columns])


def _utc_session(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(SET_UTC)
    finally:
        cursor.close()
    dbapi_connection.commit()  # a session setting, kept past this transaction


class ResultBackend(DatabaseBackend):
    """DatabaseBackend that creates its schemas before first use, runs its sessions in UTC
    and records when a task was sent and started, and how it was sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.session_manager
        theirs = manager.engine_callback  # the app's database_engine_callback, if any

        def on_engine(engine: Any) -> None:
            event.listen(engine, "connect", _utc_session)
            if theirs is not None:
                theirs(engine)

        manager.engine_callback = on_engine

    def ResultSession(self, session_manager: Any = None) -> Any:
        schemas = self.app.conf.database_table_schemas or {}
        ensure_schemas(self.url, {s for s in schemas.values() if s})
        session = super().ResultSession(session_manager)  # creates Celery's tables
        ensure_columns(self.url, self.task_cls.__table__)
        return session

    def _update_result(
        self, task: Any, result: Any, state: str, traceback: Any = None, request: Any = None
    ) -> None:
        super()._update_result(task, result, state, traceback=traceback, request=request)
        # STARTED, or REVOKED by a worker that never started it (expired, revoked): the
        # request is the delivered message's (``properties``), not one made by hand.
        if request is None or not (
            state == states.STARTED
            or (state == states.REVOKED and isinstance(getattr(request, "properties", None), dict))
        ):
            return
        session = object_session(task)
        if session is None:
            return
        options = options_of_request(request)
        sql = result_statements(qualified_name(self.task_cls.__table__))
        session.connection().exec_driver_sql(
            sql.record_started if state == states.STARTED else sql.record_options,
            {
                "sent": _sent_at(request),
                "options": json.dumps(options),
                "task_id": task.task_id,
            },
        )


def _sent_at(request: Any) -> float | None:
    """When the broker first stored the task's message (its ``delivery_info``)."""
    properties = getattr(request, "properties", None) or {}
    info = properties.get("delivery_info") if isinstance(properties, dict) else None
    sent = info.get(SENT_AT) if isinstance(info, dict) else None
    return sent if isinstance(sent, int | float) else None
