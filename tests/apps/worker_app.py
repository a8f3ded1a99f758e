"""The Celery app real test workers run (``celery -A tests.apps.worker_app worker``).

Configuration comes from the environment the test fixtures set (DATABASE_URL and the
ROAST_JOBS_* schemas), exactly as a deployment would. Tasks record each execution in a
table, so tests can count runs across processes.
"""

from __future__ import annotations

import os
import time

import psycopg

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
