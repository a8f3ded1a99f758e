"""The maintenance task, scheduled by ``roast-jobs beat``: the job features' pass
(retention, clean-up), reconciliation of Celery-path ``Job`` rows with the broker,
fan-outs that stopped half-way resumed, the batch completion sweep, and expired ephemeral
batches deleted."""

from __future__ import annotations

from typing import Any

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches
from roast_jobs.jobs import run_maintenance
from roast_jobs.service.job_service import MAINTENANCE_TASK
from roast_jobs.service.reconcile import reconcile, resume_fan_outs

from .services import job_service
from .worker import app


@app.task(name=MAINTENANCE_TASK, acks_late=True)
def maintenance() -> dict[str, Any]:
    report = run_maintenance(app)
    reconciled = reconcile(job_service())
    resumed = resume_fan_outs(job_service())
    with transaction() as session:
        completed = batches.sweep(session)
    with transaction() as session:
        expired = batches.delete_expired_ephemeral(session)
    return {
        "maintenance": report.as_dict() if report is not None else "another pass was running",
        "reconciled": [r.__dict__ for r in reconciled],
        "batches_completed": completed,
        "fan_outs_resumed": resumed,
        "ephemeral_batches_deleted": expired,
    }
