"""The Celery app real test workers run (``celery -A tests.apps.worker_app worker``).

Configuration comes from the environment the test fixtures set (DATABASE_URL and the
ROAST_JOBS_* schemas), exactly as a deployment would. Tasks record each execution in a
table, so tests can count runs across processes.
"""

from __future__ import annotations

import os
import time

import psycopg
from celery.exceptions import SoftTimeLimitExceeded

from roast_jobs.config import get_settings
from roast_jobs.tasks.app import make_celery

settings = get_settings()
app = make_celery(settings, main="tests")
RUNS = f'"{settings.result_schema}".test_runs'


def record(name: str, task_id: str | None, value: str = "") -> None:
    with psycopg.connect(settings.require_database_url().split("?")[0], autocommit=True) as c:
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {RUNS} (task_id text, name text, value text, "
            "pid int, at timestamptz DEFAULT clock_timestamp())"
        )
        c.execute(
            f"INSERT INTO {RUNS} (task_id, name, value, pid) VALUES (%s, %s, %s, %s)",
            (task_id, name, value, os.getpid()),
        )


@app.task(bind=True)
def add(self, x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def tsum(self, values: list[int]) -> int:
    return sum(values)


@app.task(bind=True)
def mark(self, label: str = "") -> str:
    record("mark", self.request.id, label)
    return label


@app.task(bind=True)
def sleepy(self, seconds: float, label: str = "") -> str:
    record("sleepy-start", self.request.id, label)
    time.sleep(seconds)
    record("sleepy", self.request.id, label)
    return label


@app.task(bind=True)
def boom(self) -> None:
    raise ValueError("boom")


@app.task(bind=True, max_retries=2, default_retry_delay=0.2)
def flaky(self, label: str) -> str:
    record("flaky", self.request.id, label)
    if self.request.retries < 2:
        raise self.retry()
    return "ok"


@app.task(bind=True)
def suicide(self) -> None:
    record("suicide", self.request.id)
    os.kill(os.getpid(), 9)


def ensure_runs_table() -> None:
    """Create the runs table before workers start (concurrent CREATEs can collide)."""
    with psycopg.connect(settings.require_database_url().split("?")[0], autocommit=True) as c:
        with c.transaction():
            # The lock the result backend takes to create its schema.
            c.execute("SELECT pg_advisory_xact_lock(hashtext('roast_jobs_results'))")
            c.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.result_schema}"')
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {RUNS} (task_id text, name text, value text, "
                "pid int, at timestamptz DEFAULT clock_timestamp())"
            )


@app.task(bind=True, max_retries=3)
def retry_countdown(self, label: str, times: int = 1, countdown: float = 1.0) -> str:
    """Record the run; retry with ``countdown`` until it has retried ``times`` times."""
    record("retry_countdown", self.request.id, f"{label}:{self.request.retries}")
    if self.request.retries < times:
        raise self.retry(countdown=countdown)
    return f"{label}:done after {self.request.retries} retries"


@app.task(bind=True)
def soft_limited(self, seconds: float, label: str = "") -> str:
    """Sleep; report a soft time limit by recording it and returning 'soft limit'."""
    record("soft-start", self.request.id, label)
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        record("soft-limit", self.request.id, label)
        return "soft limit"
    record("soft-end", self.request.id, label)
    return "slept"


def released(label: str) -> bool:
    with psycopg.connect(settings.require_database_url().split("?")[0], autocommit=True) as c:
        row = c.execute(
            f"SELECT 1 FROM {RUNS} WHERE name = 'release' AND value = %s", (label,)
        ).fetchone()
    return row is not None


@app.task(bind=True)
def hold(self, label: str, timeout: float = 120.0) -> str:
    """Run until the test records ('release', label) in the runs table (or the timeout)."""
    record("hold-start", self.request.id, label)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if released(label):
            return "released"
        time.sleep(0.2)
    return "timeout"
