"""The batch task: fans a large batch out into its jobs, one transaction per chunk.

Idempotent (``JobService.fan_out``): a retry, a redelivery after a killed worker or a
second run creates each job once. Failures are retried with the job features' backoff.
"""

from __future__ import annotations

from typing import Any

from roast_jobs.domain.payloads import BatchPayload, parse
from roast_jobs.jobs import RoastTask
from roast_jobs.service.job_service import BATCH_TASK

from .services import job_service
from .worker import app


@app.task(name=BATCH_TASK, base=RoastTask, acks_late=True)
def batch(**payload: Any) -> dict[str, Any]:
    checked = parse(BatchPayload, payload)
    created = job_service().fan_out(checked.batch_id)
    progress = job_service().batch_progress(checked.batch_id)
    return {"batch_id": checked.batch_id, "created_now": created, "jobs": progress.created}
