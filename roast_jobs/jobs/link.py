"""The job API's way into the broker tables: the transport of the app's own connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from celery import Celery

from roast_jobs.broker.connections import mask_url
from roast_jobs.broker.sql import SCHEMA_VERSION, JobStatements, Statements, job_statements
from roast_jobs.broker.transport import Transport

from .errors import JobError, NotOnThisBroker


class BrokerSchemaMissing(JobError, LookupError):
    """The broker schema does not exist, and the link was asked not to create it."""

    def __init__(self, schema: str, problem: str) -> None:
        super().__init__(problem)
        self.schema = schema


class BrokerLink:
    """Pooled connections, statements and settings of an app's roast-jobs broker.

    ``create=False`` leaves the database as it is: a missing broker schema raises
    ``BrokerSchemaMissing`` instead of being created (read-only tools must not leave empty
    schemas behind when pointed at the wrong one).
    """

    #: The result table the job API reads, set by ``JobManager.start()`` once it checked
    #: the app; None: the job API reads the broker's tables only.
    result_table: str | None = None

    def __init__(self, app: Celery, create: bool = True) -> None:
        self.app = app
        self._conn = app.connection_for_write()
        transport = self._conn.transport
        if not isinstance(transport, Transport):
            raise NotOnThisBroker(
                f"the app's broker ({self._conn.as_uri()}) is not the roast-jobs PostgreSQL "
                "transport: use a postgresql:// broker URL"
            )
        self.transport: Transport = transport
        self.sql: Statements = transport.sql
        self.jobs: JobStatements = job_statements(transport.options.schema)
        self.schema = transport.options.schema
        self.notify_channel = transport.notify_channel
        if create:
            self._conn.ensure_connection(max_retries=3)  # creates the schema if needed
        else:
            self._require_schema()

    def _require_schema(self) -> None:
        where = mask_url(self.transport.pool.conninfo)
        with self.connection() as conn:
            found = conn.execute(self.sql.schema_exists).fetchone()
            if not found or not found[0]:
                raise BrokerSchemaMissing(
                    self.schema, f"broker schema {self.schema!r} does not exist in {where}"
                )
            row = conn.execute(self.sql.current_version).fetchone()
        version = int(row[0]) if row and row[0] else 0
        if version != SCHEMA_VERSION:
            todo = (
                "start a worker of this roast-jobs, which upgrades it"
                if version < SCHEMA_VERSION
                else "upgrade roast-jobs"
            )
            raise JobError(
                f"broker schema {self.schema!r} in {where} is at version {version}, this "
                f"roast-jobs needs {SCHEMA_VERSION}: {todo}"
            )

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
