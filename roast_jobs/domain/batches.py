"""Batch progress and completion, derived from the batch's jobs (there is no status column).

A batch is complete when all its jobs exist and none is PENDING or RUNNING. Whichever job
ends last records ``completedAt``, once: the finishing transaction locks the batch row
before it looks, so two jobs ending together cannot both miss each other (each would see
the other still RUNNING under READ COMMITTED without the lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

# How many jobs a batch will have: one per entry of requestedDocumentIds (roast-jobs
# stores the planned documents there, repeats included); legacy batches made before
# that have only targetCount.
_EXPECTED = """coalesce(nullif(cardinality(b."requestedDocumentIds"), 0), b."targetCount", 0)"""

_COMPLETE = f"""
UPDATE "AgentEvalBatch" b SET "completedAt" = CURRENT_TIMESTAMP
 WHERE b.id = :batch_id AND b."completedAt" IS NULL
   AND (SELECT count(*) FROM "Job" j
         WHERE j."agentEvalBatchId" = b.id AND j."originalJobId" IS NULL) >= {_EXPECTED}
   AND NOT EXISTS (SELECT 1 FROM "Job" j
                    WHERE j."agentEvalBatchId" = b.id AND j.status IN ('PENDING', 'RUNNING'))
RETURNING b.id
"""

_SWEEP = f"""
SELECT b.id FROM "AgentEvalBatch" b
 WHERE b."completedAt" IS NULL
   AND EXISTS (SELECT 1 FROM "Job" j WHERE j."agentEvalBatchId" = b.id)
   AND (SELECT count(*) FROM "Job" j
         WHERE j."agentEvalBatchId" = b.id AND j."originalJobId" IS NULL) >= {_EXPECTED}
   AND NOT EXISTS (SELECT 1 FROM "Job" j
                    WHERE j."agentEvalBatchId" = b.id AND j.status IN ('PENDING', 'RUNNING'))
 LIMIT :limit
"""

_PROGRESS = f"""
SELECT b.id, b."agentId", b.name, b."createdAt", b."completedAt", {_EXPECTED} AS expected,
       count(j.id) FILTER (WHERE j."originalJobId" IS NULL) AS created,
       count(j.id) AS total,
       count(j.id) FILTER (WHERE j.status = 'PENDING') AS pending,
       count(j.id) FILTER (WHERE j.status = 'RUNNING') AS running,
       count(j.id) FILTER (WHERE j.status = 'COMPLETED') AS completed,
       count(j.id) FILTER (WHERE j.status = 'FAILED') AS failed,
       count(j.id) FILTER (WHERE j.status = 'CANCELLED') AS cancelled,
       count(j.id) FILTER (WHERE j.backend = 'legacy') AS legacy,
       count(j.id) FILTER (WHERE j.backend = 'celery') AS celery
  FROM "AgentEvalBatch" b LEFT JOIN "Job" j ON j."agentEvalBatchId" = b.id
 WHERE b.id = :batch_id
 GROUP BY b.id
"""


_SHORT = f"""
SELECT b.id FROM "AgentEvalBatch" b
 WHERE b."completedAt" IS NULL
   AND b."createdAt" < CURRENT_TIMESTAMP - make_interval(secs => :seconds)
   AND (SELECT count(*) FROM "Job" j
         WHERE j."agentEvalBatchId" = b.id AND j."originalJobId" IS NULL) < {_EXPECTED}
 ORDER BY b."createdAt"
 LIMIT :limit
"""


def short_of_jobs(session: Session, older_than_seconds: float, limit: int = 20) -> list[str]:
    """Batches older than ``older_than_seconds`` with fewer jobs than planned: a fan-out
    that died half-way (its creator crashed, or its task gave up)."""
    rows = session.execute(text(_SHORT), {"seconds": older_than_seconds, "limit": limit})
    return [row[0] for row in rows]


def complete_if_done(session: Session, batch_id: str | None) -> bool:
    """Record the batch's completion if this transaction's change ended its last job."""
    if batch_id is None:
        return False
    locked = session.execute(
        text('SELECT 1 FROM "AgentEvalBatch" WHERE id = :b AND "completedAt" IS NULL FOR UPDATE'),
        {"b": batch_id},
    ).first()
    if locked is None:
        return False
    return session.execute(text(_COMPLETE), {"batch_id": batch_id}).first() is not None


def sweep(session: Session, limit: int = 500) -> list[str]:
    """Complete the batches whose completion was missed (maintenance)."""
    ids = [row[0] for row in session.execute(text(_SWEEP), {"limit": limit})]
    return [batch_id for batch_id in ids if complete_if_done(session, batch_id)]


# -- expired ephemeral batches ---------------------------------------------------------------
# An ephemeral batch goes, once expired, with what was made for it: its ephemeral agent and
# documents (ON DELETE CASCADE from the batch), their evaluations (with versions, comments
# and highlights) and those evaluations' jobs. Jobs of the batch on evaluations that stay
# (the caller's own agent and documents) stay too, without their batch (SET NULL), as in
# RoastMyPost. {batches} is the batch-id condition. Each part is an index lookup (Agent's
# and Document's ephemeralBatchId, Evaluation's agentId and documentId, Job's evaluationId
# and agentEvalBatchId): one OR across them made the planner scan "Job" per batch.
# The ids are gathered into arrays first: joined, the planner guessed an ephemeral agent
# had as many evaluations as the average agent and scanned "Evaluation" whole.
_EPHEMERAL_AGENTS = 'ARRAY(SELECT id FROM "Agent" WHERE "ephemeralBatchId" {batches})'
_EPHEMERAL_DOCUMENTS = 'ARRAY(SELECT id FROM "Document" WHERE "ephemeralBatchId" {batches})'
_EPHEMERAL_EVALUATIONS = f"""
SELECT e.id FROM "Evaluation" e WHERE e."agentId" = ANY({_EPHEMERAL_AGENTS})
UNION ALL
SELECT e.id FROM "Evaluation" e WHERE e."documentId" = ANY({_EPHEMERAL_DOCUMENTS})
"""

# Kept while any of its jobs waits or runs, while another batch has a job on what would
# go, or another batch uses its agent (the agent's cascade would delete that batch).
_DELETABLE = f"""
    b."isEphemeral" AND b."expiresAt" < CURRENT_TIMESTAMP
AND NOT EXISTS (
    SELECT 1 FROM "Job" j
     WHERE j."agentEvalBatchId" = b.id AND j.status IN ('PENDING', 'RUNNING'))
AND NOT EXISTS (
    SELECT 1 FROM ({_EPHEMERAL_EVALUATIONS.format(batches="= b.id")}) ev
      JOIN "Job" j ON j."evaluationId" = ev.id
     WHERE j.status IN ('PENDING', 'RUNNING') OR j."agentEvalBatchId" <> b.id)
AND NOT EXISTS (
    SELECT 1 FROM "Agent" a JOIN "AgentEvalBatch" o ON o."agentId" = a.id
     WHERE a."ephemeralBatchId" = b.id AND o.id <> b.id)
"""

_CLAIM_EXPIRED = f"""
SELECT b.id FROM "AgentEvalBatch" b
 WHERE {_DELETABLE}
 ORDER BY b."expiresAt"
 LIMIT :limit
   FOR UPDATE OF b SKIP LOCKED
"""

# The rows that would go, each with its batch: locked before the second look so that
# nothing can be added to them meanwhile (an insert referencing a locked row waits for
# this transaction, then fails its key). SKIP LOCKED: a batch with a row someone else
# holds (a retry of its job, a request on its document) waits for a later pass; the
# clean-up itself never waits, so it is never part of a deadlock.
_ROWS_TO_LOCK = [
    ('"Agent"', 'SELECT id, "ephemeralBatchId" FROM "Agent" WHERE "ephemeralBatchId" = ANY(:ids)'),
    ('"Document"',
     'SELECT id, "ephemeralBatchId" FROM "Document" WHERE "ephemeralBatchId" = ANY(:ids)'),
    ('"Evaluation"', """
     SELECT e.id, a."ephemeralBatchId" FROM "Agent" a JOIN "Evaluation" e ON e."agentId" = a.id
      WHERE e."agentId" = ANY(ARRAY(SELECT id FROM "Agent" WHERE "ephemeralBatchId" = ANY(:ids)))
     UNION
     SELECT e.id, d."ephemeralBatchId" FROM "Document" d
       JOIN "Evaluation" e ON e."documentId" = d.id
      WHERE e."documentId" = ANY(
            ARRAY(SELECT id FROM "Document" WHERE "ephemeralBatchId" = ANY(:ids)))"""),
    ('"Job"', """
     SELECT j.id, j."agentEvalBatchId" FROM "Job" j WHERE j."agentEvalBatchId" = ANY(:ids)
     UNION
     SELECT j.id, a."ephemeralBatchId" FROM "Agent" a
       JOIN "Evaluation" e ON e."agentId" = a.id JOIN "Job" j ON j."evaluationId" = e.id
      WHERE e."agentId" = ANY(ARRAY(SELECT id FROM "Agent" WHERE "ephemeralBatchId" = ANY(:ids)))
     UNION
     SELECT j.id, d."ephemeralBatchId" FROM "Document" d
       JOIN "Evaluation" e ON e."documentId" = d.id JOIN "Job" j ON j."evaluationId" = e.id
      WHERE e."documentId" = ANY(
            ARRAY(SELECT id FROM "Document" WHERE "ephemeralBatchId" = ANY(:ids)))"""),
]  # fmt: skip

_STILL_DELETABLE = f"""
SELECT b.id FROM "AgentEvalBatch" b WHERE b.id = ANY(:ids) AND {_DELETABLE}
"""

# In this order: highlights first (a comment's delete does not cascade to its highlight),
# then the evaluations, so no version still holds the agent's versions (ON DELETE
# RESTRICT) whatever order the cascades run in, then the batches, whose delete cascades
# to their ephemeral agent and documents.
_DELETE_EPHEMERAL = [
    f"""DELETE FROM "EvaluationHighlight" h
         USING "EvaluationComment" c, "EvaluationVersion" v
        WHERE h.id = c."highlightId" AND v.id = c."evaluationVersionId"
          AND v."evaluationId" IN ({_EPHEMERAL_EVALUATIONS.format(batches="= ANY(:ids)")})""",
    f"""DELETE FROM "Evaluation"
        WHERE id IN ({_EPHEMERAL_EVALUATIONS.format(batches="= ANY(:ids)")})""",
    'DELETE FROM "AgentEvalBatch" WHERE id = ANY(:ids)',
]


def _lock_rows(session: Session, ids: list[str]) -> list[str]:
    """Lock every row that would go with the batches ``ids`` (SKIP LOCKED); the batches
    all of whose rows are now ours."""
    kept = list(ids)
    for table, rows_sql in _ROWS_TO_LOCK:
        if not kept:
            break
        owned = session.execute(text(rows_sql), {"ids": kept}).all()
        if not owned:
            continue
        locked = set(
            session.execute(
                text(f"SELECT id FROM {table} WHERE id = ANY(:rows) FOR UPDATE SKIP LOCKED"),
                {"rows": [row_id for row_id, _ in owned]},
            ).scalars()
        )
        held = {batch for row_id, batch in owned if row_id not in locked}
        kept = [b for b in kept if b not in held]
    return kept


def delete_expired_ephemeral(session: Session, limit: int = 100) -> list[str]:
    """Delete up to ``limit`` expired ephemeral batches with their ephemeral agent and
    documents (maintenance); returns their ids. It never waits for a lock: batches, or
    rows of theirs, that another transaction holds are left for a later pass, so passes
    at once delete disjoint batches."""
    ids = [row[0] for row in session.execute(text(_CLAIM_EXPIRED), {"limit": limit})]
    ids = _lock_rows(session, ids) if ids else []
    if not ids:
        return []
    # A second look, now that nothing can change under us: a job may have been made
    # between the first look and the locks.
    ids = [row[0] for row in session.execute(text(_STILL_DELETABLE), {"ids": ids})]
    if ids:
        for sql in _DELETE_EPHEMERAL:
            session.execute(text(sql), {"ids": ids})
    return ids


@dataclass(frozen=True)
class BatchProgress:
    id: str
    agent_id: str
    name: str | None
    created_at: datetime
    completed_at: datetime | None
    expected: int
    created: int
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    legacy: int
    celery: int

    @property
    def is_complete(self) -> bool:
        return self.completed_at is not None

    @property
    def progress(self) -> float:
        """Percent of the planned jobs that completed (the legacy UI's figure)."""
        return 100.0 * self.completed / self.expected if self.expected else 0.0

    def as_dict(self) -> dict[str, object]:
        out = dict(self.__dict__)
        out["is_complete"] = self.is_complete
        out["progress"] = round(self.progress, 1)
        return out


def progress(session: Session, batch_id: str) -> BatchProgress | None:
    row = session.execute(text(_PROGRESS), {"batch_id": batch_id}).mappings().first()
    if row is None:
        return None
    return BatchProgress(
        id=row["id"],
        agent_id=row["agentId"],
        name=row["name"],
        created_at=row["createdAt"],
        completed_at=row["completedAt"],
        **{
            k: int(row[k])
            for k in (
                "expected",
                "created",
                "total",
                "pending",
                "running",
                "completed",
                "failed",
                "cancelled",
                "legacy",
                "celery",
            )
        },
    )
