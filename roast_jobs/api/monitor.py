"""``/api/monitor/*`` (admins): the latest jobs, the job figures, and cancelling or
re-running a job, over both backends (the legacy routes' shapes, plus ``backend``)."""

# No "from __future__ import annotations": FastAPI reads the route annotations.

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import Field

from roast_jobs.db.models import Backend, JobStatus
from roast_jobs.service import monitor_stats

from .deps import Admin, Body, Service, Tx

router = APIRouter(tags=["monitor"])


@router.get("/api/monitor/jobs")
def list_jobs(
    _who: Admin,
    s: Tx,
    status: JobStatus | None = None,
    backend: Backend | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """The latest jobs (newest first) of a status and backend if given, and the number
    of jobs per status (of that backend, whatever the status asked)."""
    return {
        "jobs": monitor_stats.recent_jobs(s, status=status, backend=backend, limit=limit),
        "statusCounts": monitor_stats.status_counts(s, backend),
    }


@router.get("/api/monitor/stats")
def stats(_who: Admin, s: Tx) -> dict[str, Any]:
    """Job figures overall and per backend ("today": since UTC midnight), and how many
    evaluations, documents and agents there are."""
    return monitor_stats.system_stats(s)


class CancelBody(Body):
    reason: str | None = Field(default=None, max_length=1000)


@router.post("/api/monitor/jobs/{job_id}/cancel")
def cancel_job(
    job_id: str, who: Admin, service: Service, body: CancelBody | None = None
) -> dict[str, Any]:
    """A PENDING or RUNNING job -> CANCELLED (a running Celery task is killed); 400 for a
    job in any other state."""
    reason = body.reason if body else None
    return service.cancel_job(job_id, reason=reason, cancelled_by_id=who.user_id)


@router.post("/api/monitor/jobs/{job_id}/rerun", status_code=201)
def rerun_job(job_id: str, _who: Admin, service: Service) -> dict[str, Any]:
    """A new job for a FAILED or CANCELLED job's evaluation, on the backend the flags pick
    now; 400 while that evaluation has a waiting or running job."""
    return {"job": service.retry_job(job_id).as_dict(), "originalJobId": job_id}
