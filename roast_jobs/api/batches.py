"""Batches: ``POST /api/batches`` (201; with an ephemeral agent and documents made in the
request, as RoastMyPost's), ``GET /api/batches`` (the caller's, with job counts) and
``GET /api/batches/{id}`` (progress and jobs; owner or admin)."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches
from roast_jobs.domain.ephemeral import MAX_INLINE_DOCUMENTS, EphemeralAgent, InlineDocument
from roast_jobs.domain.payloads import (
    MAX_BATCH_DOCUMENTS,
    MAX_CONTENT_CHARS,
    MAX_INLINE_TOTAL_CHARS,
    Id,
)
from roast_jobs.logs import first_line
from roast_jobs.service import batch_listing
from roast_jobs.service.api_keys import Caller
from roast_jobs.service.outcomes import CreatedBatch, InvalidRequest

from . import owners
from .deps import Body, PathId, Service, Tx, Url, User, exactly_one

router = APIRouter(tags=["batches"])

_NO_NUL = r"^[^\x00]*$"
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=_NO_NUL)]
Description = Annotated[str, Field(max_length=5000, pattern=_NO_NUL)]
LongText = Annotated[str, Field(max_length=100_000, pattern=_NO_NUL)]
WebUrl = Annotated[str, Field(max_length=2048, pattern=r"^https?://[^\x00]+$")]


class EphemeralAgentBody(Body):
    """An agent made for this batch alone (deleted with it)."""

    name: Name
    description: Description | None = None
    primaryInstructions: LongText | None = None
    selfCritiqueInstructions: LongText | None = None
    readme: LongText | None = None
    providesGrades: bool | None = None


class InlineDocumentBody(Body):
    title: Annotated[str, Field(min_length=1, max_length=1000, pattern=_NO_NUL)]
    # Its size rule (30 characters to 100,000 words) is the service's: a 400.
    content: Annotated[str, Field(min_length=1, max_length=MAX_CONTENT_CHARS, pattern=_NO_NUL)]
    authors: list[Name] | None = Field(default=None, max_length=100)
    url: WebUrl | None = None


class EphemeralDocumentsBody(Body):
    """Documents made for this batch alone (deleted with it). ``urls`` is refused: import
    each with ``POST /api/import`` and pass ``documentIds``."""

    inline: list[InlineDocumentBody] | None = Field(
        default=None, min_length=1, max_length=MAX_INLINE_DOCUMENTS
    )
    urls: list[WebUrl] | None = Field(default=None, min_length=1, max_length=MAX_INLINE_DOCUMENTS)


class BatchBody(Body):
    agentId: Id | None = None
    ephemeralAgent: EphemeralAgentBody | None = None
    targetCount: int | None = Field(default=None, ge=1, le=100)
    documentIds: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_DOCUMENTS)
    ephemeralDocuments: EphemeralDocumentsBody | None = None
    name: Name | None = None
    trackingId: Name | None = None
    description: Description | None = None
    isEphemeral: bool | None = None
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


def inline_documents(body: BatchBody) -> list[InlineDocument] | None:
    """The ephemeral documents asked for; refuses what cannot be made in the request."""
    if body.ephemeralDocuments is None:
        return None
    if body.ephemeralDocuments.urls is not None:
        raise InvalidRequest(
            "ephemeralDocuments.urls is not supported: import each URL with POST /api/import, "
            "then give the documents' ids as documentIds"
        )
    if body.ephemeralDocuments.inline is None:
        raise InvalidRequest("ephemeralDocuments needs inline documents")
    total = sum(len(d.content) for d in body.ephemeralDocuments.inline)
    if total > MAX_INLINE_TOTAL_CHARS:
        raise InvalidRequest(
            f"inline documents hold {total:,} characters, more than "
            f"{MAX_INLINE_TOTAL_CHARS:,} in one batch"
        )
    return [
        InlineDocument(title=d.title, content=d.content, authors=d.authors or (), url=d.url)
        for d in body.ephemeralDocuments.inline
    ]


def ephemeral_agent(body: BatchBody) -> EphemeralAgent | None:
    spec = body.ephemeralAgent
    if spec is None:
        return None
    return EphemeralAgent(
        name=spec.name,
        description=spec.description or "",
        primary_instructions=spec.primaryInstructions,
        self_critique_instructions=spec.selfCritiqueInstructions,
        provides_grades=bool(spec.providesGrades),
        readme=spec.readme,
    )


@router.post("/api/batches", status_code=201)
def create_batch(body: BatchBody, who: User, url: Url, service: Service) -> dict[str, Any]:
    """A batch of evaluations by one of the caller's agents (``agentId``) or by an agent
    made for it (``ephemeralAgent``): ``targetCount`` (1-100) jobs over documents the
    agent evaluated before, one job per listed document (the caller's), or one per
    document made for it (``ephemeralDocuments.inline``). What is made for the batch is
    the caller's, made in the batch's transaction, and deleted with the batch once it
    expires (``expiresInDays``, default 7 for an ephemeral batch)."""
    exactly_one("agentId and ephemeralAgent", body.agentId, body.ephemeralAgent)
    exactly_one(
        "targetCount and documentIds and ephemeralDocuments",
        body.targetCount,
        body.documentIds,
        body.ephemeralDocuments,
    )
    documents = inline_documents(body)
    # Checks in a transaction of their own, ended before the service opens its own.
    with transaction(url) as s:
        if body.agentId is not None:
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
            ephemeral_agent=ephemeral_agent(body),
            inline_documents=documents,
            is_ephemeral=bool(body.isEphemeral),
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
            "isEphemeral": created.is_ephemeral,
            "jobCount": created.job_count,
            "fanOut": created.fan_out,
        },
        "agent": {"id": created.agent_id, "isEphemeral": created.agent_is_ephemeral},
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
