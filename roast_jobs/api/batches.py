"""Batches: ``POST /api/batches`` (201), ``GET /api/batches`` (the caller's, with job
counts) and ``GET /api/batches/{id}`` (progress and jobs; owner or admin)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches
from roast_jobs.domain.payloads import MAX_BATCH_DOCUMENTS, Id
from roast_jobs.logs import first_line
from roast_jobs.service import batch_listing
from roast_jobs.service.api_keys import Caller
from roast_jobs.service.outcomes import CreatedBatch

from . import owners
from .deps import Body, PathId, Service, Tx, Url, User, exactly_one

router = APIRouter(tags=["batches"])

Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00]*$")]


class BatchBody(Body):
    agentId: Id
    targetCount: int | None = Field(default=None, ge=1, le=100)
    documentIds: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_DOCUMENTS)
    name: Name | None = None
    trackingId: Name | None = None
    description: Annotated[str, Field(max_length=5000, pattern=r"^[^\x00]*$")] | None = None
    expiresInDays: int | None = Field(default=None, ge=1, le=90)


def check_documents(s: Session, who: Caller, document_ids: list[str]) -> None:
    """Every listed document must be the caller's (or the caller an admin)."""
    if who.is_admin:
        return
    theirs = s.execute(
        text('SELECT id FROM "Document" WHERE id = ANY(:ids) AND "submittedById" = :u'),
        {"ids": document_ids, "u": who.user_id},
    ).scalars()
    missing = sorted(set(document_ids) - set(theirs))
    if missing:
        raise HTTPException(404, f"document not found: {', '.join(map(repr, missing[:5]))}")


def job_rows(created: CreatedBatch) -> list[dict[str, Any]]:
    """The jobs a batch made in its own transaction (none yet when fanned out later)."""
    return [
        {"id": j.id, "documentId": j.document_id, "status": "PENDING", "backend": j.backend}
        for j in created.jobs
    ]


def conflict_message(exc: IntegrityError, tracking_id: str | None) -> str:
    """What a unique or foreign key violation at insert time means to the caller."""
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None) or ""
    if "trackingId" in constraint:  # the same trackingId, by a request at the same time
        return f"trackingId {tracking_id!r} is already used"
    return f"conflicts with a change made at the same time: {first_line(exc)}"


@router.post("/api/batches", status_code=201)
def create_batch(body: BatchBody, who: User, url: Url, service: Service) -> dict[str, Any]:
    """A batch of evaluations by one of the caller's agents: ``targetCount`` (1-100) jobs
    over documents the agent evaluated before, or one job per listed document (the
    caller's)."""
    exactly_one("targetCount and documentIds", body.targetCount, body.documentIds)
    # Checks in a transaction of their own, ended before the service opens its own.
    with transaction(url) as s:
        owners.check_agent(s, who, body.agentId)
        if body.documentIds is not None:
            check_documents(s, who, body.documentIds)
        if body.trackingId is not None:
            taken = s.execute(
                text('SELECT 1 FROM "AgentEvalBatch" WHERE "userId" = :u AND "trackingId" = :t'),
                {"u": who.user_id, "t": body.trackingId},
            ).first()
            if taken:
                raise HTTPException(409, f"trackingId {body.trackingId!r} is already used")
    try:
        created = service.create_batch_jobs(
            body.agentId,
            target_count=body.targetCount,
            document_ids=body.documentIds,
            name=body.name,
            user_id=who.user_id,
            tracking_id=body.trackingId,
            description=body.description,
            expires_in_days=body.expiresInDays,
        )
    except IntegrityError as exc:
        raise HTTPException(409, conflict_message(exc, body.trackingId)) from None
    return {
        "batch": {
            "id": created.id,
            "name": body.name,
            "agentId": created.agent_id,
            "trackingId": body.trackingId,
            "trackingUrl": f"/api/batches/{created.id}",
            "createdAt": created.created_at,
            "expiresAt": created.expires_at,
            "isEphemeral": False,
            "jobCount": created.job_count,
            "fanOut": created.fan_out,
        },
        "agent": {"id": created.agent_id, "isEphemeral": False},
        "jobs": job_rows(created),
    }


@router.get("/api/batches")
def list_batches(
    who: User,
    s: Tx,
    type: Literal["experiment", "regular"] | None = None,  # the legacy name
    includeExpired: bool = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """The caller's batches, newest first, with their jobs' counts (``jobStats``).
    ``type=experiment``: made with a trackingId."""
    return batch_listing.list_batches(s, who.user_id, type, includeExpired, limit, offset)


@router.get("/api/batches/{batch_id}")
def get_batch(batch_id: PathId, who: User, s: Tx) -> dict[str, Any]:
    """A batch's progress (completed of planned, in percent), its jobs' counts by status
    and backend, and its jobs (first 1000)."""
    owners.check_batch(s, who, batch_id)
    progress = batches.progress(s, batch_id)
    if progress is None:
        raise HTTPException(404, f"batch {batch_id!r} not found")
    stats = {
        k: getattr(progress, k)
        for k in ("total", "completed", "failed", "running", "pending", "cancelled")
    }
    return {
        "id": progress.id,
        "name": progress.name,
        "agentId": progress.agent_id,
        "createdAt": progress.created_at,
        "completedAt": progress.completed_at,
        "targetCount": progress.expected,
        "jobStats": stats,
        "byBackend": {"legacy": progress.legacy, "celery": progress.celery},
        "progress": round(progress.progress, 1),
        "isComplete": progress.is_complete,
        "jobs": batch_listing.batch_jobs(s, batch_id),
    }
