"""Who owns what: the legacy "owner only" rules. Someone else's resource answers 404,
exactly as an unknown one does, so ids do not leak. Admins see everything."""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.service.api_keys import Caller

_OWNER_OF = {
    "job": 'SELECT d."submittedById" FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId"'
    ' JOIN "Document" d ON d.id = e."documentId" WHERE j.id = :id',
    "document": 'SELECT "submittedById" FROM "Document" WHERE id = :id',
    "agent": 'SELECT "submittedById" FROM "Agent" WHERE id = :id',
    "batch": 'SELECT "userId" FROM "AgentEvalBatch" WHERE id = :id',
}


def _check(session: Session, who: Caller, kind: str, resource_id: str) -> None:
    owner = session.execute(text(_OWNER_OF[kind]), {"id": resource_id}).scalar()
    if owner is None or (owner != who.user_id and not who.is_admin):
        raise HTTPException(404, f"{kind} {resource_id!r} not found")


def check_job(session: Session, who: Caller, job_id: str) -> None:
    _check(session, who, "job", job_id)


def check_document(session: Session, who: Caller, document_id: str) -> None:
    _check(session, who, "document", document_id)


def check_agent(session: Session, who: Caller, agent_id: str) -> None:
    _check(session, who, "agent", agent_id)


def check_batch(session: Session, who: Caller, batch_id: str) -> None:
    _check(session, who, "batch", batch_id)
