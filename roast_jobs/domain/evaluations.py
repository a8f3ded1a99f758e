"""Evaluations: one per (document, agent), created on demand (RoastMyPost's upsert)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session


class NotFound(LookupError):
    """Unknown ids; the message names them (the first few)."""

    def __init__(self, kind: str, ids: Sequence[str]) -> None:
        shown = ", ".join(repr(i) for i in list(ids)[:5])
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        super().__init__(f"{kind} not found: {shown}{more}")
        self.kind = kind
        self.ids = list(ids)


def check_agent(session: Session, agent_id: str) -> None:
    row = session.execute(
        text(
            'SELECT a.id, count(v.id) FROM "Agent" a LEFT JOIN "AgentVersion" v '
            'ON v."agentId" = a.id WHERE a.id = :id GROUP BY a.id'
        ),
        {"id": agent_id},
    ).first()
    if row is None:
        raise NotFound("agent", [agent_id])
    if row[1] == 0:
        raise NotFound("agent version of agent", [agent_id])


def check_documents(session: Session, document_ids: Sequence[str]) -> None:
    wanted = list(dict.fromkeys(document_ids))
    found = {
        row[0]
        for row in session.execute(
            text('SELECT id FROM "Document" WHERE id = ANY(:ids)'), {"ids": wanted}
        )
    }
    missing = [d for d in wanted if d not in found]
    if missing:
        raise NotFound("document", missing)


def upsert_evaluations(
    session: Session, document_ids: Sequence[str], agent_id: str
) -> dict[str, str]:
    """Evaluation id by document id for ``agent_id``, created where missing. Raises
    ``NotFound`` (before writing anything) for unknown documents or agent."""
    wanted = list(dict.fromkeys(document_ids))
    if not wanted:
        return {}
    check_agent(session, agent_id)
    check_documents(session, wanted)
    session.execute(
        text(
            'INSERT INTO "Evaluation" (id, "documentId", "agentId") '
            "SELECT gen_random_uuid()::text, d, :agent FROM unnest(CAST(:docs AS text[])) d "
            'ON CONFLICT ("documentId", "agentId") DO NOTHING'
        ),
        {"agent": agent_id, "docs": wanted},
    )
    rows = session.execute(
        text(
            'SELECT "documentId", id FROM "Evaluation" '
            'WHERE "agentId" = :agent AND "documentId" = ANY(:docs)'
        ),
        {"agent": agent_id, "docs": wanted},
    )
    return {row[0]: row[1] for row in rows}


def documents_with_versions(session: Session, agent_id: str) -> list[str]:
    """Documents that already have an evaluation with versions by this agent (the legacy
    ``targetCount`` pool)."""
    rows = session.execute(
        text(
            'SELECT DISTINCT e."documentId" FROM "Evaluation" e '
            'JOIN "EvaluationVersion" v ON v."evaluationId" = e.id '
            'WHERE e."agentId" = :agent ORDER BY 1'
        ),
        {"agent": agent_id},
    )
    return [row[0] for row in rows]


_PREPARE = """
WITH p AS (
    SELECT (SELECT reason FROM "SystemPause" WHERE "endedAt" IS NULL
             ORDER BY "startedAt" DESC LIMIT 1) AS paused,
           EXISTS (SELECT 1 FROM "Document" WHERE id = :doc) AS document_found
), a AS (
    SELECT x.id, v.id IS NOT NULL AS versioned, v."extendedCapabilityId" AS capability
      FROM "Agent" x
      LEFT JOIN LATERAL (SELECT id, "extendedCapabilityId" FROM "AgentVersion"
                          WHERE "agentId" = x.id ORDER BY version DESC LIMIT 1) v ON true
     WHERE x.id = ANY(CAST(:agents AS text[]))
), ins AS (
    INSERT INTO "Evaluation" (id, "documentId", "agentId")
    SELECT gen_random_uuid()::text, :doc, a.id FROM a, p
     WHERE p.paused IS NULL AND p.document_found AND a.versioned
    ON CONFLICT ("documentId", "agentId") DO UPDATE SET "agentId" = EXCLUDED."agentId"
    RETURNING "agentId", id
)
SELECT p.paused, p.document_found, a.id, a.versioned, a.capability, ins.id
  FROM p LEFT JOIN a ON true LEFT JOIN ins ON ins."agentId" = a.id
"""


#: Creates hold it shared from their pause check to their commit; opening a pause takes it
#: exclusively. So a pause, once its opening returns, has no create in flight behind it:
#: those that passed the check before it have committed, later ones wait and see it.
PAUSE_LOCK = "hashtext('roast_jobs.pause')"
_PAUSE_GUARD = text(f"SELECT pg_advisory_xact_lock_shared({PAUSE_LOCK})")


def guard_against_pause(session: Session) -> None:
    """Take the pause lock shared, in a statement of its own: the pause check that follows
    must read after the wait (a statement reads the rows committed when it started)."""
    session.execute(_PAUSE_GUARD)


class Paused(RuntimeError):
    """An open ``SystemPause``: no job may be created."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def prepare_for_document(
    session: Session, document_id: str, agent_ids: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """In one round trip: check that no pause is open, that the document and the agents
    exist and the agents have versions, and upsert the evaluations. Returns, per agent,
    (evaluation id, the latest version's ``extendedCapabilityId``: its time limit).
    On a refusal the caller's transaction must roll back (nothing was inserted then
    anyway: the insert is conditional on the checks)."""
    guard_against_pause(session)
    rows = session.execute(text(_PREPARE), {"doc": document_id, "agents": list(agent_ids)}).all()
    paused, document_found = rows[0][0], rows[0][1]
    if paused is not None:
        raise Paused(paused)
    if not document_found:
        raise NotFound("document", [document_id])
    found = {row[2]: row for row in rows if row[2] is not None}
    missing = [a for a in agent_ids if a not in found]
    if missing:
        raise NotFound("agent", missing)
    unversioned = [a for a in agent_ids if not found[a][3]]
    if unversioned:
        raise NotFound("agent version of agent", unversioned)
    return {a: (found[a][5], found[a][4]) for a in agent_ids}
