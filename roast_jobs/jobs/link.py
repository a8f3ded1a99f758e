"""The job API's way into the broker tables: the transport of the app's own connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from celery import Celery

from roast_jobs.broker.sql import JobStatements, Statements, job_statements
from roast_jobs.broker.transport import Transport

from .errors import NotOnThisBroker


class BrokerLink:
    """Pooled connections, statements and settings of an app's roast-jobs broker."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._conn = app.connection_for_write()
        transport = self._conn.transport
        if not isinstance(transport, Transport):
            raise NotOnThisBroker(
                f"the app's broker ({self._conn.as_uri()}) is not the roast-jobs PostgreSQL "
                "transport: use a postgresql:// broker URL"
            )
        self._conn.ensure_connection(max_retries=3)  # creates the schema if needed
        self.transport: Transport = transport
        self.sql: Statements = transport.sql
        self.jobs: JobStatements = job_statements(transport.options.schema)
        self.schema = transport.options.schema
        self.notify_channel = transport.notify_channel

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self.transport.pool.connection() as conn:
            yield conn

    def fetch(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.connection() as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def close(self) -> None:
        self._conn.release()
