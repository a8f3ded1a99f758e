"""Tasks for the job-facts tests (``celery -A tests.apps.facts_app worker``).

Every task of ``tests.apps.jobs_app`` (same app), plus a few whose runs behave
differently from one run to the next, and one acked early (Celery's default).
"""

from __future__ import annotations

import time

from roast_jobs.jobs import RetryPolicy, RoastTask
from tests.apps import jobs_app
from tests.apps.jobs_app import app, record_run, runs_of

__all__ = ["app", "job_early_ack", "job_fail_then_hold", "jobs_app"]


@app.task(bind=True, base=RoastTask, retry_policy=RetryPolicy(limit=2, delay=0.2, jitter=False))
def job_fail_then_hold(self, label: str, timeout: float = 120.0) -> None:
    """Fails its first run at once; later runs wait for 'release:<label>', then fail."""
    record_run(self.request.id, label, self.request.retries or 0)
    if runs_of(label) > 1:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not runs_of(f"release:{label}"):
            time.sleep(0.1)
    raise ValueError(f"job_fail_then_hold {label}")


@app.task(bind=True, acks_late=False)
def job_early_ack(self, label: str) -> None:
    """Acked when it starts (acks_late=False): its message row goes before it runs."""
    record_run(self.request.id, label)
