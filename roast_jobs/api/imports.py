"""``POST /api/import``: importing an article is a job now. On Celery it answers 202 at
once with the import's task id (``GET /api/import/{id}`` tells how it went); where the
flags keep imports on the legacy side it runs in the request, as RoastMyPost's did, and
answers 201 with the legacy response."""

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import Field

from roast_jobs.domain.payloads import MAX_IMPORT_AGENTS, Id
from roast_jobs.jobs.errors import JobNotFound
from roast_jobs.service.job_service import IMPORT_TASK

from .deps import Body, PathId, Service, User
from .errors import QUOTA_RESPONSES, ErrorBody

router = APIRouter(tags=["imports"])


class ImportBody(Body):
    url: str = Field(min_length=1, max_length=2048)
    agentIds: list[Id] = Field(default_factory=list, max_length=MAX_IMPORT_AGENTS)


@router.post(
    "/api/import",
    status_code=202,
    responses={
        201: {"description": "Imported in the request (the flags keep imports legacy)"},
        502: {"model": ErrorBody, "description": "The page could not be fetched (may pass later)"},
        **QUOTA_RESPONSES,
    },
)
def import_article(body: ImportBody, who: User, service: Service) -> JSONResponse:
    """Import the article at ``url`` as the caller's document and queue its evaluations
    by ``agentIds``. One import per URL is in flight at a time: a second request while
    one runs gets the same job (``created: false``)."""
    made = service.create_import_job(
        body.url, body.agentIds, submitted_by_id=who.user_id, quota=True
    )
    if made.backend == "celery":
        return JSONResponse(
            {
                "jobId": made.task_id,
                "backend": "celery",
                "created": made.created,
                "statusUrl": f"/api/import/{made.task_id}",
            },
            202,
        )
    result = dict(made.result or {})
    result["evaluations"] = []  # the legacy response's field, always empty
    result["backend"] = "legacy"
    return JSONResponse(result, 201)


@router.get("/api/import/{job_id}")
def import_status(job_id: PathId, who: User, service: Service) -> dict[str, Any]:
    """An import job's state and, once done, its result (the document and jobs)."""
    try:
        job = service.manager.get_job(job_id)
    except JobNotFound:
        job = None
    kwargs = (job.kwargs or {}) if job is not None else {}
    if (
        job is None
        or job.name != IMPORT_TASK
        or (kwargs.get("submitted_by_id") != who.user_id and not who.is_admin)
    ):
        raise HTTPException(404, f"import {job_id!r} not found")
    return {
        "jobId": job.id,
        "state": job.state.value,
        "url": kwargs.get("url"),
        "createdAt": job.created_at,
        "completedAt": job.completed_at,
        "result": job.result,
        "error": job.error,
    }
