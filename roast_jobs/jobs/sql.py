"""Every statement roast-jobs runs against Celery's result tables, in one place.

Celery's database backend owns the tables (the task table, ``result_extended``, and the
group table); roast-jobs adds three columns to the task table (``EXTRA_COLUMNS``) and
reads them for the job-state API. The broker's own tables have theirs in
``roast_jobs.broker.sql``.

Times: Celery writes ``date_done`` into a ``timestamp without time zone`` column, and
PostgreSQL stores the writing session's wall-clock time there. ``ResultBackend`` runs its
sessions in UTC (``SET_UTC``), so the column holds UTC whatever the server's, role's or
client's ``TimeZone``. Compare it with ``UTC_NOW``, never ``localtimestamp`` or ``now()``
(the reading session may be in another zone), and read it as a point in time with
``DONE_AT``.

Parameters are psycopg's named ones (``%(name)s``); table names come quoted from
``qualified_name``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

#: Columns roast-jobs adds to Celery's task table.
EXTRA_COLUMNS = {
    "date_created": "timestamptz",
    "date_started": "timestamptz",
    "options": "jsonb",
}

#: The session setting every result-backend connection starts with.
SET_UTC = "SET TIME ZONE 'UTC'"
#: Now, as ``date_done`` holds it: UTC wall-clock time.
UTC_NOW = "(now() AT TIME ZONE 'UTC')"
#: ``date_done`` as a point in time (timestamptz).
DONE_AT = "(date_done AT TIME ZONE 'UTC')"

#: Whether a table (``%(table)s``, a qualified name) exists, without creating it.
TABLE_EXISTS = "SELECT to_regclass(%(table)s) IS NOT NULL"
#: One server's database: the same on two connections only if it is the same one.
SERVER_IDENTITY = "SELECT current_database(), pg_postmaster_start_time(), current_setting('port')"

#: Taken while creating schemas and columns: workers starting together would race.
SETUP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('roast_jobs_results'))"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified_name(table: Any) -> str:
    """A SQLAlchemy table's quoted name, with its schema."""
    name = quote_identifier(table.name)
    return f"{quote_identifier(table.schema)}.{name}" if table.schema else name


def create_schema(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}"


@dataclass(frozen=True)
class ResultStatements:
    add_columns: str
    #: status, date_done (timestamptz), date_created, date_started, options of one task.
    find: str
    options: str
    #: At STARTED: when it was sent and started, and how (see ``retry.stored_options``).
    record_started: str
    #: The options (and when it was sent) of a job that never started: cancelled, or
    #: revoked by a worker (expired).
    record_options: str
    #: (queue, status, count) of results finished within the last ``window`` seconds.
    finished_counts: str
    #: Retention (the maintenance pass): successful results older than ``completed``
    #: seconds, failed and revoked ones older than ``failed``; how many went.
    retention: str


@cache
def result_statements(task_table: str) -> ResultStatements:
    """The statements on the task table ``task_table`` (quoted, see ``qualified_name``)."""
    t = task_table
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {k}" for c, k in EXTRA_COLUMNS.items())
    return ResultStatements(
        add_columns=f"ALTER TABLE {t} {adds}",
        find=(
            f"SELECT status, {DONE_AT}, date_created, date_started, options "
            f"FROM {t} WHERE task_id = %(id)s"
        ),
        options=f"SELECT options FROM {t} WHERE task_id = %(id)s",
        record_started=(
            f"UPDATE {t} SET date_started = now(), date_created = to_timestamp(%(sent)s::float8), "
            "options = %(options)s::jsonb WHERE task_id = %(task_id)s"
        ),
        record_options=(
            f"UPDATE {t} SET options = %(options)s::jsonb, "
            "date_created = COALESCE(date_created, to_timestamp(%(sent)s::float8)) "
            "WHERE task_id = %(task_id)s"
        ),
        finished_counts=f"""
            SELECT queue, status, count(*) FROM {t}
            WHERE status IN ('SUCCESS', 'FAILURE') AND queue IS NOT NULL
              AND (%(queue)s::text IS NULL OR queue = %(queue)s)
              AND date_done > {UTC_NOW} - make_interval(secs => %(window)s)
            GROUP BY queue, status
            """,
        retention=f"""
            WITH gone AS (
                DELETE FROM {t}
                WHERE (status = 'SUCCESS'
                       AND date_done < {UTC_NOW} - make_interval(secs => %(completed)s))
                   OR (status IN ('FAILURE', 'REVOKED')
                       AND date_done < {UTC_NOW} - make_interval(secs => %(failed)s))
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
    )


def group_retention(group_table: str) -> str:
    """Group results older than ``failed`` seconds; how many went."""
    return f"""
        WITH gone AS (
            DELETE FROM {group_table}
            WHERE date_done < {UTC_NOW} - make_interval(secs => %(failed)s)
            RETURNING 1
        )
        SELECT count(*) FROM gone
    """
