"""Tasks for the chaos tests (``celery -A tests.apps.chaos_app worker``).

Same app and configuration as ``tests.apps.worker_app``. Each run is recorded in
``<result schema>.chaos_runs``, with retries, so that a run during a database outage
is still counted once the server is back.
"""

from __future__ import annotations

import os
import signal
import time

import psycopg

from tests.apps.worker_app import app, settings

__all__ = ["RUNS_TABLE", "app", "ensure_runs_table", "poison", "work"]

RUNS_TABLE = f'"{settings.result_schema}".chaos_runs'
WORK = "tests.apps.chaos_app.work"
POISON = "tests.apps.chaos_app.poison"


def ensure_runs_table(url: str, table: str = RUNS_TABLE) -> None:
    """Create the runs table (and its schema) before any worker starts."""
    schema = table.split(".")[0]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (label text, task_id text, kind text, "
            "pid int, at timestamptz DEFAULT clock_timestamp())"
        )


def record_run(label: str, task_id: str | None, kind: str, patience: float = 120.0) -> None:
    """Insert one run row, riding over a restarting or unreachable server."""
    url = settings.require_database_url().split("?")[0]
    deadline = time.monotonic() + patience
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
                c.execute(
                    f"INSERT INTO {RUNS_TABLE} (label, task_id, kind, pid) VALUES (%s, %s, %s, %s)",
                    (label, task_id, kind, os.getpid()),
                )
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@app.task(bind=True)
def work(self, seconds: float, label: str) -> str:
    time.sleep(seconds)
    record_run(label, self.request.id, "done")
    return label


@app.task(bind=True)
def poison(self, label: str) -> None:
    """Kills the pool process running it, on every delivery."""
    record_run(label, self.request.id, "poison")
    os.kill(os.getpid(), signal.SIGKILL)
