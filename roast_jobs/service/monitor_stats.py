"""What the monitor routes read: the latest jobs and the job figures, over both backends
(both keep their jobs in the ``"Job"`` table, told apart by its ``backend`` column).

Definitions: "today" is since UTC midnight; a job "ended" when its ``completedAt`` is set
(``updatedAt`` for an old row that lacks it); ``successRate24h`` is completed / (completed
+ failed) over the jobs that ended in the last 24 h, None when none did;
``avgDurationMinutes`` is over every completed job with a duration (as the legacy route),
None when there is none; ``totalCostToday`` sums ``priceInDollars`` of the jobs completed
today.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.db.models import Backend, JobStatus

_RECENT = text(
    """
SELECT j.id, j.status, j."createdAt", j."startedAt", j."completedAt", j.error, j.attempts,
       j.backend, j."brokerJobId", j."evaluationId", j."agentEvalBatchId", e."documentId",
       e."agentId", j."originalJobId", j."durationInSeconds", j."priceInDollars"
  FROM "Job" j
  LEFT JOIN "Evaluation" e ON e.id = j."evaluationId"
 WHERE (CAST(:status AS text) IS NULL OR j.status::text = :status)
   AND (CAST(:backend AS text) IS NULL OR j.backend = :backend)
 ORDER BY j."createdAt" DESC, j.id DESC
 LIMIT :limit
"""
)

_STATUS_COUNTS = text(
    """
SELECT status::text, count(*) FROM "Job"
 WHERE CAST(:backend AS text) IS NULL OR backend = :backend
 GROUP BY status
"""
)

_ENDED = 'COALESCE("completedAt", "updatedAt")'
_FIGURES = text(
    f"""
WITH b AS (
  SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AS today,
         (now() AT TIME ZONE 'UTC') - interval '24 hours' AS day_ago
)
SELECT j.backend,
       count(*),
       count(*) FILTER (WHERE j.status = 'PENDING'),
       count(*) FILTER (WHERE j.status = 'RUNNING'),
       count(*) FILTER (WHERE j.status = 'COMPLETED'),
       count(*) FILTER (WHERE j.status = 'FAILED'),
       count(*) FILTER (WHERE j.status = 'CANCELLED'),
       count(*) FILTER (WHERE j.status = 'COMPLETED' AND {_ENDED} >= b.today),
       count(*) FILTER (WHERE j.status = 'FAILED' AND {_ENDED} >= b.today),
       count(*) FILTER (WHERE j.status = 'COMPLETED' AND {_ENDED} >= b.day_ago),
       count(*) FILTER (WHERE j.status = 'FAILED' AND {_ENDED} >= b.day_ago),
       COALESCE(sum(j."durationInSeconds") FILTER (WHERE j.status = 'COMPLETED'), 0),
       count(j."durationInSeconds") FILTER (WHERE j.status = 'COMPLETED'),
       COALESCE(sum(j."priceInDollars")
                  FILTER (WHERE j.status = 'COMPLETED' AND {_ENDED} >= b.today), 0)
  FROM "Job" j CROSS JOIN b
 GROUP BY j.backend
"""
)

_TABLE_COUNTS = text(
    'SELECT (SELECT count(*) FROM "Evaluation"), (SELECT count(*) FROM "Document"), '
    '(SELECT count(*) FROM "Agent")'
)

_COUNT_KEYS = (
    "total",
    "pending",
    "running",
    "completed",
    "failed",
    "cancelled",
    "completedToday",
    "failedToday",
    "completed24h",
    "failed24h",
    "durationSeconds",
    "durations",
    "costToday",
)


def _first_line(error: str | None) -> str | None:
    lines = (error or "").strip().splitlines()
    return lines[0] if lines else None


def recent_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    backend: Backend | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The latest ``limit`` jobs (newest first), of ``status`` and ``backend`` if given."""
    rows = session.execute(
        _RECENT,
        {
            "status": status.value if status else None,
            "backend": backend.value if backend else None,
            "limit": limit,
        },
    ).all()
    return [
        {
            "id": r[0],
            "status": r[1],
            "createdAt": r[2],
            "startedAt": r[3],
            "completedAt": r[4],
            "error": _first_line(r[5]),
            "attempts": r[6],
            "backend": r[7],
            "brokerJobId": r[8],
            "evaluationId": r[9],
            "agentEvalBatchId": r[10],
            "documentId": r[11],
            "agentId": r[12],
            "originalJobId": r[13],
            "durationInSeconds": r[14],
            "priceInDollars": None if r[15] is None else str(r[15]),
        }
        for r in rows
    ]


def status_counts(session: Session, backend: Backend | None = None) -> dict[str, int]:
    """Jobs per status (every status present, 0 included), of ``backend`` if given."""
    counts = dict.fromkeys((s.value for s in JobStatus), 0)
    params = {"backend": backend.value if backend else None}
    for status, n in session.execute(_STATUS_COUNTS, params):
        counts[status] = int(n)
    return counts


def _figures(raw: dict[str, Any]) -> dict[str, Any]:
    ended = raw["completed24h"] + raw["failed24h"]
    return {
        "total": raw["total"],
        "pending": raw["pending"],
        "running": raw["running"],
        "completed": raw["completed"],
        "failed": raw["failed"],
        "cancelled": raw["cancelled"],
        "completedToday": raw["completedToday"],
        "failedToday": raw["failedToday"],
        "successRate24h": round(raw["completed24h"] / ended, 4) if ended else None,
        "avgDurationMinutes": (
            round(raw["durationSeconds"] / raw["durations"] / 60, 2) if raw["durations"] else None
        ),
        "totalCostToday": float(round(raw["costToday"], 6)),
    }


def system_stats(session: Session) -> dict[str, Any]:
    """The job figures, overall and per backend, and the evaluations, documents and
    agents there are."""
    empty = dict.fromkeys(_COUNT_KEYS, 0)
    raw: dict[str, dict[str, Any]] = {b.value: dict(empty) for b in Backend}
    for row in session.execute(_FIGURES):
        raw[row[0]] = dict(zip(_COUNT_KEYS, row[1:], strict=True))
    overall = {k: sum((raw[b][k] for b in raw), Decimal(0) if k == "costToday" else 0)
               for k in _COUNT_KEYS}  # fmt: skip
    evaluations, documents, agents = session.execute(_TABLE_COUNTS).one()
    return {
        "jobs": _figures(overall),
        "evaluations": evaluations,
        "documents": documents,
        "agents": agents,
        "byBackend": {b: _figures(r) for b, r in raw.items()},
    }
