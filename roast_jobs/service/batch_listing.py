"""Batches as the API lists them: a user's batches with job counts, and one batch with
its jobs (the legacy ``GET /api/batches`` and ``GET /api/batches/{id}`` shapes)."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.orm import Session

BatchType = Literal["experiment", "regular"]

# "experiment" is the legacy name for a batch made with a trackingId or as ephemeral.
_LIST = """
SELECT b.id, b.name, b."agentId", b."createdAt", b."completedAt", b."targetCount",
       b."trackingId", b.description, b."isEphemeral", b."expiresAt",
       coalesce(s.total, 0) AS total, coalesce(s.pending, 0) AS pending,
       coalesce(s.running, 0) AS running, coalesce(s.completed, 0) AS completed,
       coalesce(s.failed, 0) AS failed, coalesce(s.cancelled, 0) AS cancelled,
       count(*) OVER () AS matching
  FROM "AgentEvalBatch" b
  LEFT JOIN LATERAL (
      SELECT count(*) AS total,
             count(*) FILTER (WHERE status = 'PENDING') AS pending,
             count(*) FILTER (WHERE status = 'RUNNING') AS running,
             count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
             count(*) FILTER (WHERE status = 'FAILED') AS failed,
             count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled
        FROM "Job" WHERE "agentEvalBatchId" = b.id) s ON true
 WHERE b."userId" = :user
   AND (CAST(:kind AS text) IS NULL
        OR (CAST(:kind AS text) = 'experiment') = (b."trackingId" IS NOT NULL OR b."isEphemeral"))
   AND (:expired OR b."expiresAt" IS NULL OR b."expiresAt" > CURRENT_TIMESTAMP)
 ORDER BY b."createdAt" DESC, b.id
 LIMIT :limit OFFSET :offset
"""

_JOBS = """
SELECT j.id, j.status, j.backend, j.attempts, j."createdAt", j."startedAt", j."completedAt",
       split_part(j.error, E'\\n', 1) AS error, e."documentId"
  FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId"
 WHERE j."agentEvalBatchId" = :id
 ORDER BY j."createdAt", j.id
 LIMIT :limit
"""

_STATS = ("total", "completed", "failed", "running", "pending", "cancelled")


def list_batches(
    session: Session,
    user_id: str,
    kind: BatchType | None,
    include_expired: bool,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    rows = (
        session.execute(
            text(_LIST),
            {
                "user": user_id,
                "kind": kind,
                "expired": include_expired,
                "limit": limit,
                "offset": offset,
            },
        )
        .mappings()
        .all()
    )
    total = int(rows[0]["matching"]) if rows else _count(session, user_id, kind, include_expired)
    batches = []
    for r in rows:
        batch = {k: v for k, v in r.items() if k not in _STATS and k != "matching"}
        batch["jobStats"] = {k: int(r[k]) for k in _STATS}
        batches.append(batch)
    return {"batches": batches, "total": total, "limit": limit, "offset": offset}


def _count(session: Session, user_id: str, kind: BatchType | None, include_expired: bool) -> int:
    # Past the last page the window count is not there: count on its own.
    sql = f"SELECT count(*) FROM ({_LIST}) x"
    return int(
        session.execute(
            text(sql),
            {"user": user_id, "kind": kind, "expired": include_expired, "limit": None, "offset": 0},
        ).scalar_one()
    )


def batch_jobs(session: Session, batch_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    rows = session.execute(text(_JOBS), {"id": batch_id, "limit": limit}).mappings().all()
    return [dict(r) for r in rows]
