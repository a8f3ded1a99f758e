"""Evaluations: one document by one or more agents, a document re-run by an agent, and
an agent's batch (``eval-batch``). Documents are their owner's; agents' batches their
owner's (others get 404)."""

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import Field
from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.domain.payloads import MAX_BATCH_DOCUMENTS, MAX_IMPORT_AGENTS, Id
from roast_jobs.service import quotas
from roast_jobs.service.evaluation_requests import current_evaluation, request_evaluation

from . import owners
from .batches import Name, job_rows
from .deps import Body, PathId, Service, Tx, Url, User, exactly_one
from .errors import QUOTA_RESPONSES, QuotaBody

router = APIRouter(tags=["evaluations"])


class EvalBatchBody(Body):
    name: Name | None = None
    targetCount: int | None = Field(default=None, ge=1, le=100)
    documentIds: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_BATCH_DOCUMENTS)


class DocumentEvaluationsBody(Body):
    agentId: Id | None = None
    agentIds: list[Id] | None = Field(default=None, min_length=1, max_length=MAX_IMPORT_AGENTS)


class RerunBody(Body):
    fromVersion: int | None = Field(default=None, ge=1, le=1_000_000)


_WITHOUT_EVALUATION = """
SELECT d FROM unnest(CAST(:docs AS text[])) d
 WHERE NOT EXISTS (SELECT 1 FROM "Evaluation" e WHERE e."documentId" = d AND e."agentId" = :agent)
"""


@router.post("/api/evaluators/{agent_id}/eval-batch", status_code=201)
def eval_batch(
    agent_id: PathId, body: EvalBatchBody, who: User, url: Url, service: Service
) -> dict[str, Any]:
    """A batch by the caller's agent: ``targetCount`` jobs over documents it already
    evaluated (sampled, repeated to reach the count), or one job per listed document,
    each of which must already have an evaluation by this agent (the legacy rule)."""
    exactly_one("targetCount and documentIds", body.targetCount, body.documentIds)
    with transaction(url) as s:  # ended before the service opens its own
        owners.check_agent(s, who, agent_id)
        missing = []
        if body.documentIds is not None:
            missing = list(
                s.execute(
                    text(_WITHOUT_EVALUATION), {"docs": body.documentIds, "agent": agent_id}
                ).scalars()
            )
    if missing:
        shown = ", ".join(map(repr, missing[:5]))
        raise HTTPException(400, f"documents without an evaluation by agent {agent_id!r}: {shown}")
    created = service.create_batch_jobs(
        agent_id,
        target_count=body.targetCount,
        document_ids=body.documentIds,
        name=body.name,
        user_id=who.user_id,
    )
    return {
        "batch": {
            "id": created.id,
            "name": body.name,
            "agentId": agent_id,
            "createdAt": created.created_at,
            "targetCount": created.target_count,
            "documentIds": created.document_ids,
            "jobCount": created.job_count,
            "fanOut": created.fan_out,
        },
        "jobs": job_rows(created),
    }


@router.post("/api/documents/{document_id}/evaluations", status_code=201, responses=QUOTA_RESPONSES)
def evaluate_document(
    document_id: PathId, body: DocumentEvaluationsBody, who: User, s: Tx, service: Service
) -> dict[str, Any]:
    """One job per agent for the caller's document, all or none."""
    exactly_one("agentId and agentIds", body.agentId, body.agentIds)
    owners.check_document(s, who, document_id)
    agents = [body.agentId] if body.agentId is not None else list(body.agentIds or [])
    existing = set(
        s.execute(
            text(
                'SELECT "agentId" FROM "Evaluation" WHERE "documentId" = :d AND "agentId" = ANY(:a)'
            ),
            {"d": document_id, "a": agents},
        ).scalars()
    )
    jobs = service.create_evaluation_jobs(document_id, agents, session=s)  # one transaction
    quotas.charge(s, who.user_id, len(jobs))  # over the limit: the jobs roll back with it
    out = [
        {
            "agentId": j.agent_id,
            "evaluationId": j.evaluation_id,
            "jobId": j.id,
            "status": "pending",
            "created": j.agent_id not in existing,
            "backend": j.backend,
        }
        for j in jobs
    ]
    if body.agentId is not None:
        return out[0]
    return {"evaluations": out, "total": len(out)}


@router.get("/api/docs/{document_id}/evals/{agent_id}")
def get_evaluation(document_id: PathId, agent_id: PathId, who: User, s: Tx) -> dict[str, Any]:
    """The evaluation with its current version and that version's job (``NO_JOB`` when
    none), plus its latest job."""
    owners.check_document(s, who, document_id)
    return {"evaluation": current_evaluation(s, document_id, agent_id)}


@router.post("/api/docs/{document_id}/evals/{agent_id}", responses=QUOTA_RESPONSES)
def run_evaluation(
    document_id: PathId, agent_id: PathId, who: User, s: Tx, service: Service
) -> dict[str, Any]:
    """Evaluate the caller's document with an agent (the evaluation made if missing);
    400 while a job of it is waiting or running."""
    owners.check_document(s, who, document_id)
    made = request_evaluation(service, s, document_id, agent_id)
    quotas.charge(s, who.user_id, 1)
    return {
        "success": True,
        "evaluation": made["evaluation"],
        "job": made["job"],
        "message": f"evaluation queued on {made['job']['backend']}",
    }


@router.post("/api/docs/{document_id}/evals/{agent_id}/rerun", responses=QUOTA_RESPONSES)
def rerun_evaluation(
    document_id: PathId,
    agent_id: PathId,
    who: User,
    s: Tx,
    service: Service,
    body: RerunBody | None = None,
) -> dict[str, Any]:
    """Run an existing evaluation again; 400 while a job of it is waiting or running."""
    owners.check_document(s, who, document_id)
    from_version = body.fromVersion if body is not None else None
    made = request_evaluation(
        service, s, document_id, agent_id, rerun=True, from_version=from_version
    )
    quotas.charge(s, who.user_id, 1)
    return {
        "success": True,
        "evaluation": made["evaluation"],
        "job": made["job"],
        "message": f"re-run queued on {made['job']['backend']}",
        "context": {"fromVersion": from_version, "previousVersion": made["previousVersion"]},
    }


class MyQuota(QuotaBody):
    enabled: bool


@router.get("/api/quota")
def my_quota(who: User, s: Tx) -> MyQuota:
    """The caller's plan and the evaluations counted this hour and month (requests that
    create evaluation jobs count; batches do not, as in RoastMyPost)."""
    usage = quotas.usage_of(s, who.user_id).as_dict()
    return MyQuota.model_validate({**usage, "enabled": quotas.enabled()})
