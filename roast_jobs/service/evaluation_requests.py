"""Asking for one evaluation: run (or re-run) a document with an agent, refused while the
evaluation already has a waiting or running job (the legacy rule), and the evaluation's
current state. Two requests at once for the same pair are serialised by a transaction
advisory lock, so the "already waiting" check cannot be passed twice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.domain.evaluations import NotFound

from .outcomes import InvalidRequest

if TYPE_CHECKING:
    from .job_service import JobService

# Held until the transaction ends, i.e. until the new job row is committed.
_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('rj-evaluation:' || :doc || ':' || :agent, 0))"
)

_STATE = """
SELECT e.id,
       (SELECT max(v.version) FROM "EvaluationVersion" v WHERE v."evaluationId" = e.id),
       (SELECT j.id FROM "Job" j
         WHERE j."evaluationId" = e.id AND j.status IN ('PENDING', 'RUNNING') LIMIT 1)
  FROM "Evaluation" e
 WHERE e."documentId" = :doc AND e."agentId" = :agent
"""

_CURRENT = """
SELECT e.id, e."documentId", e."agentId", e."createdAt",
       v.id AS version_id, v.version, v.summary, v.grade, v."createdAt" AS version_created,
       vj.status AS version_job_status, vj."priceInDollars", vj."durationInSeconds",
       lj.id AS latest_job_id, lj.status AS latest_job_status, lj.backend AS latest_job_backend
  FROM "Evaluation" e
  LEFT JOIN LATERAL (SELECT * FROM "EvaluationVersion" WHERE "evaluationId" = e.id
                      ORDER BY version DESC LIMIT 1) v ON true
  LEFT JOIN "Job" vj ON vj."evaluationVersionId" = v.id
  LEFT JOIN LATERAL (SELECT id, status, backend FROM "Job" WHERE "evaluationId" = e.id
                      ORDER BY "createdAt" DESC, id DESC LIMIT 1) lj ON true
 WHERE e."documentId" = :doc AND e."agentId" = :agent
"""


def lock_evaluation(session: Session, evaluation_id: str) -> None:
    """Take the (document, agent) lock of an existing evaluation."""
    pair = (
        session.execute(
            text('SELECT "documentId" AS doc, "agentId" AS agent FROM "Evaluation" WHERE id = :id'),
            {"id": evaluation_id},
        )
        .mappings()
        .first()
    )
    if pair is not None:
        session.execute(text(_LOCK), dict(pair))


def request_evaluation(
    service: JobService,
    session: Session,
    document_id: str,
    agent_id: str,
    *,
    rerun: bool = False,
    from_version: int | None = None,
) -> dict[str, Any]:
    """A new job for (document, agent) in ``session``'s transaction. ``rerun``: the
    evaluation must exist already. Returns the evaluation, the job and the version it
    follows."""
    pair = {"doc": document_id, "agent": agent_id}
    session.execute(text(_LOCK), pair)
    state = session.execute(text(_STATE), pair).first()
    if state is None and rerun:
        raise NotFound(f"evaluation of document {document_id!r} by agent", [agent_id])
    latest = state[1] if state is not None else None
    if state is not None and state[2] is not None:
        raise InvalidRequest(
            f"the evaluation of document {document_id!r} by agent {agent_id!r} already has "
            f"a waiting or running job ({state[2]})"
        )
    if from_version is not None and (latest is None or not 1 <= from_version <= latest):
        have = "no versions" if latest is None else f"versions 1-{latest}"
        raise InvalidRequest(
            f"fromVersion {from_version} does not exist (the evaluation has {have})"
        )
    [job] = service.create_evaluation_jobs(document_id, [agent_id], session=session)
    return {
        "evaluation": {
            "id": job.evaluation_id,
            "documentId": document_id,
            "agentId": agent_id,
            "created": state is None,
        },
        "job": {"id": job.id, "status": "PENDING", "backend": job.backend},
        "previousVersion": latest,
    }


def current_evaluation(session: Session, document_id: str, agent_id: str) -> dict[str, Any]:
    """The evaluation with its latest version and that version's job (``NO_JOB`` when
    none made it), plus the evaluation's latest job."""
    row = (
        session.execute(text(_CURRENT), {"doc": document_id, "agent": agent_id}).mappings().first()
    )
    if row is None:
        raise NotFound(f"evaluation of document {document_id!r} by agent", [agent_id])
    version = None
    if row["version_id"] is not None:
        price = row["priceInDollars"]
        version = {
            "id": row["version_id"],
            "version": row["version"],
            "summary": row["summary"],
            "grade": row["grade"],
            "createdAt": row["version_created"],
            "job": {
                "status": row["version_job_status"] or "NO_JOB",
                "priceInDollars": None if price is None else str(price),
                "durationInSeconds": row["durationInSeconds"],
            },
        }
    latest_job = None
    if row["latest_job_id"] is not None:
        latest_job = {
            "id": row["latest_job_id"],
            "status": row["latest_job_status"],
            "backend": row["latest_job_backend"],
        }
    return {
        "id": row["id"],
        "documentId": row["documentId"],
        "agentId": row["agentId"],
        "createdAt": row["createdAt"],
        "currentVersion": version,
        "latestJob": latest_job,
    }
