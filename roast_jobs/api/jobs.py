"""``GET /api/jobs/{id}``: one job, the legacy shape plus its backend (owner or admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records

from . import owners
from .deps import PathId, Service, Url, User

router = APIRouter(tags=["jobs"])


@router.get("/api/jobs/{job_id}")
def get_job(job_id: PathId, who: User, url: Url, service: Service) -> dict[str, Any]:
    """A job, as the legacy route shows it, plus its backend (the document's owner
    only, or an admin)."""
    # The check's transaction ends before the service opens its own: a request never
    # holds two pooled connections (enough requests at once would starve the pool).
    with transaction(url) as s:
        owners.check_job(s, who, job_id)
    try:
        return service.get_job_status(job_id)
    except job_records.JobNotFound:
        raise HTTPException(404, f"job {job_id!r} not found") from None
