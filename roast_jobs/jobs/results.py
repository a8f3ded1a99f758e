"""Celery's database result backend, kept in its own schema of the app's PostgreSQL.

Three columns are added to Celery's task table, written when a task starts, so that the
job-state API can say when a job was sent and started and re-send it as it was:
``date_created`` (when the broker first stored the message), ``date_started`` and
``options`` (priority and time limits of the run).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from celery import states
from celery.backends.database import DatabaseBackend
from sqlalchemy import create_engine, text
from sqlalchemy.orm import object_session
from sqlalchemy.pool import NullPool

from roast_jobs.broker.payload import SENT_AT

EXTRA_COLUMNS = {
    "date_created": "timestamptz",
    "date_started": "timestamptz",
    "options": "jsonb",
}

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
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('roast_jobs_results'))"))
                for statement in statements():
                    conn.execute(text(statement))
        finally:
            engine.dispose()
        _ready.add((url, key))


def ensure_schemas(url: str, schemas: set[str]) -> None:
    if schemas:
        _once(url, frozenset(schemas), lambda: [
            f'CREATE SCHEMA IF NOT EXISTS "{schema}"' for schema in sorted(schemas)])  # fmt: skip


def qualified_name(table: Any) -> str:
    name = f'"{table.name}"'
    return f'"{table.schema}".{name}' if table.schema else name


def ensure_columns(url: str, table: Any) -> None:
    """Add roast-jobs' columns to Celery's task table."""
    name = qualified_name(table)
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {k}" for c, k in EXTRA_COLUMNS.items())
    _once(url, frozenset({name}), lambda: [f"ALTER TABLE {name} {adds}"])


class ResultBackend(DatabaseBackend):
    """DatabaseBackend that creates its schemas before first use and records when a task
    was sent and started, and with which options."""

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
        if state != states.STARTED or request is None:
            return
        session = object_session(task)
        if session is None:
            return
        priority = (getattr(request, "delivery_info", None) or {}).get("priority")
        limits = getattr(request, "timelimit", None) or (None, None)
        options = {"priority": priority, "time_limit": limits[0], "soft_time_limit": limits[1]}
        session.execute(
            text(
                f"UPDATE {qualified_name(self.task_cls.__table__)} "
                "SET date_started = now(), date_created = to_timestamp(:sent), "
                "options = CAST(:options AS jsonb) WHERE task_id = :task_id"
            ),
            {
                "sent": getattr(request, SENT_AT, None),
                "options": json.dumps(options),
                "task_id": task.task_id,
            },
        )
