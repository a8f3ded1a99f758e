"""The maintenance task, scheduled by ``roast-jobs beat``: the job features' pass
(retention, clean-up), reconciliation of Celery-path ``Job`` rows with the broker,
fan-outs that stopped half-way resumed, the batch completion sweep, and expired ephemeral
batches deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches
from roast_jobs.jobs import run_maintenance
from roast_jobs.logs import first_line
from roast_jobs.service.job_service import MAINTENANCE_TASK
from roast_jobs.service.reconcile import reconcile, resume_fan_outs

from .services import job_service
from .worker import app

log = logging.getLogger(__name__)


class MaintenanceIncomplete(RuntimeError):
    """Some steps failed; the others ran (and committed): the message reports both."""


def _completed_batches() -> list[str]:
    with transaction() as session:
        return batches.sweep(session)


def _expired_batches() -> list[str]:
    with transaction() as session:
        return batches.delete_expired_ephemeral(session)


@app.task(name=MAINTENANCE_TASK, acks_late=True)
def maintenance() -> dict[str, Any]:
    """Each step on its own: one that fails (logged) does not keep the others from
    running; the task then fails, its message naming what failed and what was done."""
    steps: dict[str, Callable[[], Any]] = {
        "maintenance": lambda: (
            report.as_dict() if (report := run_maintenance(app)) is not None
            else "another pass was running"
        ),
        "reconciled": lambda: [r.__dict__ for r in reconcile(job_service())],
        "fan_outs_resumed": lambda: resume_fan_outs(job_service()),
        "batches_completed": _completed_batches,
        "ephemeral_batches_deleted": _expired_batches,
    }  # fmt: skip
    done: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name, step in steps.items():
        try:
            done[name] = step()
        except Exception as exc:
            log.exception("maintenance step %s failed", name)
            failed[name] = first_line(exc)
    if failed:
        raise MaintenanceIncomplete(f"failed: {failed}; done: {done}")
    return done
