"""Tasks for the job-feature tests (``celery -A tests.apps.jobs_app worker``).

Same app as ``tests.apps.worker_app``, plus tasks that record each run in one table
over one connection per process (bulk tests run ten thousand of them).
"""

from __future__ import annotations

import os
import time

import psycopg
from celery.exceptions import Reject

from roast_jobs.jobs import RetryPolicy, RoastTask, ack_in, enqueue_in
from tests.apps.worker_app import app, settings

__all__ = ["JOB_RUNS", "app", "ensure_job_runs"]

JOB_RUNS = f'"{settings.result_schema}".job_runs'
_conn: tuple[int, psycopg.Connection] | None = None


def _db() -> psycopg.Connection:
    global _conn
    if _conn is None or _conn[0] != os.getpid() or _conn[1].closed:
        url = settings.require_database_url().split("?")[0]
        _conn = (os.getpid(), psycopg.connect(url, autocommit=True))
    return _conn[1]


def ensure_job_runs() -> None:
    url = settings.require_database_url().split("?")[0]
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA IF NOT EXISTS "{settings.result_schema}"')
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {JOB_RUNS} (task_id text, label text, "
            "retries int, at timestamptz DEFAULT clock_timestamp())"
        )


def record_run(task_id: str | None, label: str, retries: int = 0) -> None:
    _db().execute(
        f"INSERT INTO {JOB_RUNS} (task_id, label, retries) VALUES (%s, %s, %s)",
        (task_id, label, retries),
    )


def runs_of(label: str) -> int:
    return (
        _db().execute(f"SELECT count(*) FROM {JOB_RUNS} WHERE label = %s", (label,)).fetchone()[0]
    )


@app.task(bind=True)
def job_record(self, label: str, n: int = 0) -> int:
    record_run(self.request.id, label, self.request.retries or 0)
    return n


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=2, delay=0.2, jitter=False))
def job_fail(self, label: str) -> None:
    record_run(self.request.id, label, self.request.retries or 0)
    raise ValueError(f"job_fail {label}")


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=3, delay=0.2, jitter=False))
def job_flaky(self, label: str, fails: int) -> str:
    """Fails its first ``fails`` runs (counted across retries), then succeeds."""
    record_run(self.request.id, label, self.request.retries or 0)
    if runs_of(label) <= fails:
        raise RuntimeError(f"job_flaky {label}: failing on purpose")
    return "ok"


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=3, delay=60, jitter=False))
def job_fail_slow_retry(self, label: str) -> None:
    """Fails and waits a minute before its retry: stays in the retry state."""
    record_run(self.request.id, label, self.request.retries or 0)
    raise ValueError("retry later")


@app.task(bind=True)
def job_reject(self, label: str) -> None:
    record_run(self.request.id, label)
    raise Reject("rejected on purpose", requeue=False)


@app.task(bind=True)
def job_hold(self, label: str, timeout: float = 120.0) -> str:
    """Runs until a row with label 'release:<label>' appears (or the timeout)."""
    record_run(self.request.id, label)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runs_of(f"release:{label}"):
            return "released"
        time.sleep(0.1)
    return "timeout"


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=3, delay=1, jitter=False))
def job_fail_first_on_release(self, label: str) -> str:
    """The first run waits for 'release:<label>', then fails (retryable); retries pass."""
    record_run(self.request.id, label, self.request.retries or 0)
    if self.request.retries:
        return "ok"
    while not runs_of(f"release:{label}"):
        time.sleep(0.1)
    raise RuntimeError(f"job_fail_first_on_release {label}: failing on purpose")


@app.task(bind=True)
def job_resend_and_return(self, label: str) -> int:
    """Sends itself again for later (retry without raising), then succeeds."""
    record_run(self.request.id, label)
    self.retry(countdown=600, throw=False)
    return 42


@app.task(bind=True, base=RoastTask)
def job_retry_inside_its_transaction(self, label: str) -> str:
    """Raises its retry from inside its own enqueue_in block (which rolls back)."""
    record_run(self.request.id, label, self.request.retries or 0)
    if self.request.retries:
        return "ok"
    url = settings.require_database_url().split("?")[0]
    with psycopg.connect(url) as conn, enqueue_in(conn):
        job_record.delay(f"{label}:rolled-back")  # goes with the transaction
        raise self.retry(countdown=0.2)


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=1, delay=0.1, jitter=False))
def job_retry_with_a_database_error(self, label: str) -> None:
    """Retries with a psycopg error as its exc: out of retries (Celery's, then the
    policy's), that error is its failure."""
    record_run(self.request.id, label, self.request.retries or 0)
    raise self.retry(exc=psycopg.errors.UniqueViolation(f"{label} taken"), max_retries=1,
                     countdown=0.1)  # fmt: skip


@app.task(bind=True, base=RoastTask)
def job_ack_in_then_retry(self, label: str) -> str:
    """Ends its delivery with ack_in, then raises its retry, in one enqueue_in block."""
    record_run(self.request.id, label, self.request.retries or 0)
    if self.request.retries:
        return "ok"
    url = settings.require_database_url().split("?")[0]
    with psycopg.connect(url) as conn, enqueue_in(conn):
        ack_in(conn, self.request.id, app)
        raise self.retry(countdown=0.2)
