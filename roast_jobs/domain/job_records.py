"""State changes of a ``Job`` row, the same on both backends; each is one transaction's part.

Every change locks the row (``FOR UPDATE``) and checks where it stands first, so a
cancelled job stays cancelled whatever its run does later, and a redelivered message
cannot finish a job twice. A job that ends checks its batch (``batches.complete_if_done``)
in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from roast_jobs.db.models import ACTIVE_STATUSES, Backend, Job, JobStatus

from . import batches
from .retry_classes import clean_error

UTC_NOW = text("CURRENT_TIMESTAMP")  # sessions run in UTC


class JobNotFound(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


@dataclass(frozen=True)
class JobSnapshot:
    id: str
    status: JobStatus
    attempts: int
    evaluation_id: str
    batch_id: str | None
    original_job_id: str | None
    backend: str
    broker_job_id: str | None
    started_at: datetime | None


def _snapshot(job: Job) -> JobSnapshot:
    return JobSnapshot(
        id=job.id,
        status=JobStatus(job.status),
        attempts=job.attempts,
        evaluation_id=job.evaluation_id,
        batch_id=job.agent_eval_batch_id,
        original_job_id=job.original_job_id,
        backend=str(job.backend),
        broker_job_id=job.broker_job_id,
        started_at=job.started_at,
    )


def owned_by(job: Job, owner: str | None) -> bool:
    """Whether the Celery task ``owner`` still owns ``job`` (always, without an owner).
    ``owner`` "" stands for a Celery row that has no task id."""
    return owner is None or (
        job.backend == Backend.CELERY.value and (job.broker_job_id or "") == owner
    )


def lock(session: Session, job_id: str) -> Job:
    job = session.execute(
        select(Job)
        .where(Job.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if job is None:
        raise JobNotFound(job_id)
    return job


_START = """
UPDATE "Job" SET status = 'RUNNING', attempts = attempts + 1,
       "startedAt" = CURRENT_TIMESTAMP, "updatedAt" = CURRENT_TIMESTAMP
 WHERE id = :id AND status IN ('PENDING', 'RUNNING')
   AND (CAST(:owner AS text) IS NULL OR (backend = 'celery' AND "brokerJobId" = :owner))
RETURNING id, status, attempts, "evaluationId", "agentEvalBatchId", "originalJobId", backend,
          "brokerJobId", "startedAt"
"""


def mark_running(session: Session, job_id: str, owner: str | None = None) -> JobSnapshot | None:
    """PENDING (or RUNNING again, after a lost worker) -> RUNNING, attempts + 1, in one
    statement (the row lock is the UPDATE's).

    None when the job has ended (cancelled before it started, or finished by an earlier
    delivery), or, with ``owner`` (a Celery task id), when that task no longer owns the
    job (the migrator moved it to the legacy backend, or on with a new task id): the run
    must do nothing."""
    row = session.execute(text(_START), {"id": job_id, "owner": owner}).first()
    if row is None:
        if session.execute(text('SELECT 1 FROM "Job" WHERE id = :id'), {"id": job_id}).first():
            return None
        raise JobNotFound(job_id)
    return JobSnapshot(
        id=row[0],
        status=JobStatus(row[1]),
        attempts=row[2],
        evaluation_id=row[3],
        batch_id=row[4],
        original_job_id=row[5],
        backend=row[6],
        broker_job_id=row[7],
        started_at=row[8],
    )


def complete(
    session: Session,
    job_id: str,
    batch_id: str | None,
    *,
    evaluation_version_id: str,
    duration_seconds: float,
    logs: str,
) -> None:
    """RUNNING -> COMPLETED (the caller holds the row lock and wrote the version)."""
    session.execute(
        text(
            'UPDATE "Job" SET status = \'COMPLETED\', "evaluationVersionId" = :version, '
            '"durationInSeconds" = :duration, logs = :logs, error = NULL, '
            '"completedAt" = CURRENT_TIMESTAMP, "updatedAt" = CURRENT_TIMESTAMP WHERE id = :id'
        ),
        {
            "id": job_id,
            "version": evaluation_version_id,
            "duration": round(duration_seconds),  # an Int column
            "logs": logs,
        },
    )
    batches.complete_if_done(session, batch_id)


def lock_status(
    session: Session, job_id: str, owner: str | None = None
) -> tuple[JobStatus, str, str | None]:
    """(status, evaluation id, batch id) of the job, its row locked. With ``owner`` (a
    Celery task id) a job that task no longer owns reads as CANCELLED: it is not the
    run's to finish."""
    row = session.execute(
        text(
            'SELECT status, "evaluationId", "agentEvalBatchId", backend, "brokerJobId" '
            'FROM "Job" WHERE id = :id FOR UPDATE'
        ),
        {"id": job_id},
    ).first()
    if row is None:
        raise JobNotFound(job_id)
    if owner is not None and (row[3] != Backend.CELERY.value or (row[4] or "") != owner):
        return JobStatus.CANCELLED, row[1], row[2]
    return JobStatus(row[0]), row[1], row[2]


def fail(
    session: Session,
    job_id: str,
    error: str,
    *,
    logs: str | None = None,
    from_statuses: tuple[JobStatus, ...] = ACTIVE_STATUSES,
    check_batch: bool = True,
    owner: str | None = None,
) -> JobSnapshot | None:
    """-> FAILED with the cleaned error; None (nothing changed) when the job was not in
    ``from_statuses`` (e.g. cancelled meanwhile) or the Celery task ``owner`` no longer
    owns it (moved to the other backend). ``check_batch`` False: the caller adds a retry
    job first and checks the batch itself, after it."""
    job = lock(session, job_id)
    if JobStatus(job.status) not in from_statuses or not owned_by(job, owner):
        return None
    values: dict[str, object] = {
        "status": JobStatus.FAILED,
        "error": clean_error(error),
        "completed_at": UTC_NOW,
        "updated_at": UTC_NOW,
    }
    if logs is not None:
        values["logs"] = logs
    if job.started_at is not None:
        values["duration_in_seconds"] = text(
            'round(extract(epoch FROM CURRENT_TIMESTAMP - "startedAt"))::int'
        )
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    snapshot = _snapshot(lock(session, job_id))
    if check_batch:
        batches.complete_if_done(session, snapshot.batch_id)
    return snapshot


def mark_retrying(
    session: Session,
    job_id: str,
    error: str,
    *,
    allow_pending: bool = False,
    owner: str | None = None,
) -> bool:
    """RUNNING -> PENDING with the error kept: the Celery path retries the same row.
    ``allow_pending``: the run failed before it could mark the job RUNNING (the row is
    still PENDING). False when the job has ended (cancelled: do not retry) or the Celery
    task ``owner`` no longer owns it."""
    job = lock(session, job_id)
    allowed = (JobStatus.RUNNING, JobStatus.PENDING) if allow_pending else (JobStatus.RUNNING,)
    if JobStatus(job.status) not in allowed or not owned_by(job, owner):
        return False
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(status=JobStatus.PENDING, error=clean_error(error), updated_at=UTC_NOW)
    )
    return True


def cancel(
    session: Session,
    job_id: str,
    *,
    reason: str | None = None,
    cancelled_by_id: str | None = None,
) -> JobSnapshot:
    """PENDING/RUNNING -> CANCELLED (``InvalidJobState`` otherwise)."""
    job = lock(session, job_id)
    if job.status not in ACTIVE_STATUSES:
        raise InvalidJobState(job_id, JobStatus(job.status), "cancel")
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=JobStatus.CANCELLED,
            cancelled_at=UTC_NOW,
            completed_at=UTC_NOW,
            updated_at=UTC_NOW,
            cancellation_reason=clean_error(reason) if reason else None,
            cancelled_by_id=cancelled_by_id,
        )
    )
    snapshot = _snapshot(lock(session, job_id))
    batches.complete_if_done(session, snapshot.batch_id)
    return snapshot


class InvalidJobState(ValueError):
    def __init__(self, job_id: str, status: JobStatus, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {status.value}")
        self.job_id = job_id
        self.status = status


def new_job(
    *,
    evaluation_id: str,
    backend: Backend,
    batch_id: str | None = None,
    original_job_id: str | None = None,
    attempts: int = 0,
    broker_job_id: str | None = None,
    job_id: str | None = None,
) -> Job:
    job = Job(
        evaluation_id=evaluation_id,
        backend=backend.value,
        agent_eval_batch_id=batch_id,
        original_job_id=original_job_id,
        attempts=attempts,
        broker_job_id=broker_job_id,
        status=JobStatus.PENDING,
    )
    if job_id is not None:
        job.id = job_id
    return job
