"""The legacy queue's operations on the ``Job`` table (``backend = 'legacy'`` rows only).

RoastMyPost's rules, without its bugs: FIFO by ``createdAt``; a failure inserts a new
PENDING row (``originalJobId`` = the chain's first job) when the error is retryable and
the chain has run fewer than ``evaluation_max_attempts`` times. ``attempts`` counts runs
once (the legacy code also added one when it made the retry row, so chains ran at most
twice instead of three times).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.db.models import Backend, JobStatus
from roast_jobs.domain import batches, job_records
from roast_jobs.domain.job_records import JobSnapshot

_CLAIM = """
UPDATE "Job" SET status = 'RUNNING', attempts = attempts + 1,
       "startedAt" = CURRENT_TIMESTAMP, "updatedAt" = CURRENT_TIMESTAMP
 WHERE id = (SELECT id FROM "Job"
              WHERE status = 'PENDING' AND backend = 'legacy'
              ORDER BY "createdAt", id
              LIMIT 1
                FOR UPDATE SKIP LOCKED)
RETURNING id, attempts, "evaluationId", "agentEvalBatchId", "originalJobId"
"""

_STALE = """
SELECT id FROM "Job"
 WHERE status = 'RUNNING' AND backend = 'legacy'
   AND "startedAt" < CURRENT_TIMESTAMP - make_interval(secs => :seconds)
 ORDER BY "startedAt"
 LIMIT :limit
   FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True)
class Claimed:
    id: str
    attempts: int
    evaluation_id: str
    batch_id: str | None
    original_job_id: str | None


def create(session: Session, evaluation_id: str, batch_id: str | None = None) -> str:
    job = job_records.new_job(
        evaluation_id=evaluation_id, backend=Backend.LEGACY, batch_id=batch_id
    )
    session.add(job)
    session.flush()
    return job.id


def claim(session: Session) -> Claimed | None:
    """The oldest PENDING legacy job, now RUNNING (attempts + 1, startedAt)."""
    row = session.execute(text(_CLAIM)).first()
    if row is None:
        return None
    return Claimed(row[0], row[1], row[2], row[3], row[4])


def fail(
    session: Session, job_id: str, error: str, *, retryable: bool, logs: str | None = None
) -> str | None:
    """RUNNING -> FAILED; returns the id of the retry row when one was made. A job that
    is no longer RUNNING (cancelled meanwhile) is left as it is."""
    failed = job_records.fail(
        session, job_id, error, logs=logs, from_statuses=(JobStatus.RUNNING,), check_batch=False
    )
    if failed is None:
        return None
    retry_id = None
    if retryable and failed.attempts < get_settings().evaluation_max_attempts:
        retry_id = _retry_row(session, failed)
    # After the retry row: its batch is not done while the retry waits.
    batches.complete_if_done(session, failed.batch_id)
    return retry_id


def _retry_row(session: Session, failed: JobSnapshot) -> str:
    retry = job_records.new_job(
        evaluation_id=failed.evaluation_id,
        backend=Backend.LEGACY,
        batch_id=failed.batch_id,
        original_job_id=failed.original_job_id or failed.id,
        attempts=failed.attempts,  # runs so far; the claim adds this one
    )
    session.add(retry)
    session.flush()
    return retry.id


def stale_running(session: Session, older_than_seconds: float, limit: int = 100) -> list[str]:
    """RUNNING legacy jobs started longer ago than ``older_than_seconds``, locked."""
    rows = session.execute(text(_STALE), {"seconds": older_than_seconds, "limit": limit})
    return [row[0] for row in rows]


def cancel(
    session: Session, job_id: str, reason: str | None = None, cancelled_by_id: str | None = None
) -> JobSnapshot:
    return job_records.cancel(session, job_id, reason=reason, cancelled_by_id=cancelled_by_id)
