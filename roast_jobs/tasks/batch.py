"""The batch task: fans a large batch out into its jobs, one transaction per chunk.

Idempotent (``JobService.fan_out``): a retry, a redelivery after a killed worker or a
second run creates each job once. Failures are retried with the job features' backoff.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from roast_jobs.domain.payloads import BatchPayload, parse
from roast_jobs.jobs import RoastTask
from roast_jobs.service.job_service import BATCH_TASK, SystemPaused

from .services import job_service
from .worker import app

#: Seconds between looks while job creation is paused, and how many looks (about a week;
#: Celery reads max_retries=None as its default of 3).
PAUSED_RETRY_DELAY = 60.0
PAUSED_MAX_LOOKS = 10_000


@app.task(name=BATCH_TASK, base=RoastTask, bind=True, acks_late=True)
def batch(self: Task, **payload: Any) -> dict[str, Any]:
    checked = parse(BatchPayload, payload)
    try:
        created = job_service().fan_out(checked.batch_id)
    except SystemPaused as exc:
        # Resume when the pause ends, however long it lasts (not a failure to count).
        raise self.retry(
            countdown=PAUSED_RETRY_DELAY, exc=exc, max_retries=PAUSED_MAX_LOOKS
        ) from None
    progress = job_service().batch_progress(checked.batch_id)
    return {"batch_id": checked.batch_id, "created_now": created, "jobs": progress.created}
