"""Celery's database result backend, kept in its own schema of the app's PostgreSQL."""

from __future__ import annotations

import threading
from typing import Any

from celery.backends.database import DatabaseBackend
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_ready: set[tuple[str, frozenset[str]]] = set()
_lock = threading.Lock()


def sqlalchemy_url(database_url: str) -> str:
    """``postgresql://...`` as a SQLAlchemy URL on psycopg 3, without broker options."""
    from roast_jobs.broker.connections import split_url

    libpq, _ = split_url(database_url)
    return "postgresql+psycopg://" + libpq.split("://", 1)[1]


def ensure_schemas(url: str, schemas: set[str]) -> None:
    key = (url, frozenset(schemas))
    if not schemas or key in _ready:
        return
    with _lock:
        if key in _ready:
            return
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                # Workers starting together would race on CREATE SCHEMA IF NOT EXISTS.
                conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('roast_jobs_results'))"))
                for schema in sorted(schemas):
                    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        finally:
            engine.dispose()
        _ready.add(key)


class ResultBackend(DatabaseBackend):
    """DatabaseBackend that creates its schemas before first use."""

    def ResultSession(self, session_manager: Any = None) -> Any:
        schemas = self.app.conf.database_table_schemas or {}
        ensure_schemas(self.url, {s for s in schemas.values() if s})
        return super().ResultSession(session_manager)
