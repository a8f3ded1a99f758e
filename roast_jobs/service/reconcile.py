"""Reconciling Celery-path ``Job`` rows with the broker (the real system's reconciler).

A RUNNING job not updated for ``stale_job_seconds`` (30 min), or a PENDING one not updated
for ``stale_pending_seconds`` (10 min), whose broker message is no longer live (waiting,
delayed, running or retrying) is marked FAILED with the reason. Its batch is checked in the
same transaction. Legacy rows are the legacy worker's business (its stale sweep).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import text

from roast_jobs.config import get_settings
from roast_jobs.db.models import JobStatus
from roast_jobs.domain import batches, job_records
from roast_jobs.domain.evaluations import NotFound
from roast_jobs.jobs.errors import JobNotFound as BrokerJobNotFound
from roast_jobs.jobs.state import CANCELLABLE_STATES

from .job_service import JobService, SystemPaused

log = logging.getLogger("roast_jobs.reconcile")

_CANDIDATES = """
SELECT id, status, "brokerJobId" FROM "Job"
 WHERE backend = 'celery'
   AND ((status = 'RUNNING' AND "updatedAt" < CURRENT_TIMESTAMP - make_interval(secs => :running))
     OR (status = 'PENDING' AND "updatedAt" < CURRENT_TIMESTAMP - make_interval(secs => :pending)))
 ORDER BY "updatedAt"
 LIMIT :limit
"""

# The same staleness, checked again under the row lock in the failing transaction: the
# broker was asked in between (a redriven message may have been claimed meanwhile).
_STILL_STALE = """
SELECT 1 FROM "Job"
 WHERE id = :id AND "updatedAt" < CURRENT_TIMESTAMP - make_interval(secs => :after)
   FOR UPDATE
"""


@dataclass(frozen=True)
class Reconciled:
    job_id: str
    was: str
    reason: str


def _live(service: JobService, broker_job_id: str | None) -> bool:
    if not broker_job_id:
        return False
    try:
        return service.manager.get_job(broker_job_id).state in CANCELLABLE_STATES
    except BrokerJobNotFound:
        return False


def reconcile(service: JobService, limit: int = 200) -> list[Reconciled]:
    settings = get_settings()
    with service._tx() as session:
        rows = session.execute(
            text(_CANDIDATES),
            {
                "running": settings.stale_job_seconds,
                "pending": settings.stale_pending_seconds,
                "limit": limit,
            },
        ).all()
    out = []
    for job_id, status, broker_job_id in rows:
        if _live(service, broker_job_id):
            continue
        running = status == JobStatus.RUNNING.value
        after = settings.stale_job_seconds if running else settings.stale_pending_seconds
        if running:
            reason = (
                f"reconciled: RUNNING for more than {settings.stale_job_seconds:g} s "
                "with no live broker message"
            )
        else:
            reason = "reconciled: PENDING with no broker message"
        with service._tx() as session:
            if session.execute(text(_STILL_STALE), {"id": job_id, "after": after}).first() is None:
                continue  # touched since we looked: a run took it up again
            # Only if it is still as we saw it: a run may have moved it meanwhile.
            # ... and still this task's ("": a Celery row with no task id): the migrator
            # may have moved it to legacy.
            done = job_records.fail(
                session,
                job_id,
                reason,
                from_statuses=(JobStatus(status),),
                owner=broker_job_id or "",
            )
        if done is not None:
            out.append(Reconciled(job_id, status, reason))
    return out


#: A fan-out still short of jobs after this long is resumed (it takes seconds when alive).
FAN_OUT_GRACE_SECONDS = 300.0


def resume_fan_outs(
    service: JobService, older_than: float = FAN_OUT_GRACE_SECONDS
) -> dict[str, int]:
    """Finish the fan-outs that stopped half-way; jobs created now, by batch. Safe next
    to a live fan-out of the same batch (job ids derive from the batch and position)."""
    with service._tx() as session:
        short = batches.short_of_jobs(session, older_than)
    resumed = {}
    for batch_id in short:
        try:
            resumed[batch_id] = service.fan_out(batch_id)
        except (NotFound, SystemPaused) as exc:
            log.warning("batch %s: cannot resume its fan-out: %s", batch_id, exc)
    return resumed
