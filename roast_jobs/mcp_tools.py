"""What RoastMyPost's MCP job tools answer, over both backends (``roast-jobs mcp`` serves
them; see ``cli_mcp``). Plain functions of a ``JobService``: each returns JSON-ready data
or raises the service's one-line errors.

``get_job_queue_status`` keeps the legacy output shape (``summary``, ``health`` and, with
``includeDetails``, the latest completed and failed jobs) and adds ``byBackend``. One
legacy rule is not kept: an idle queue (nothing pending, nothing running) was reported
unhealthy (``pending < 100 && running > 0``); here it is healthy.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from roast_jobs.domain.evaluations import NotFound
from roast_jobs.service.evaluation_requests import request_evaluation
from roast_jobs.service.job_service import InvalidRequest, JobService

#: "Recently" in the legacy summary: the last 24 hours.
RECENT_HOURS = 24
#: The legacy health rule's backlog limit.
BACKLOG_LIMIT = 100
DETAIL_ROWS = 10

_COUNTS = """
SELECT backend,
       count(*) FILTER (WHERE status = 'PENDING'),
       count(*) FILTER (WHERE status = 'RUNNING'),
       count(*) FILTER (WHERE status = 'COMPLETED'
                          AND "completedAt" > CURRENT_TIMESTAMP - make_interval(hours => :h)),
       count(*) FILTER (WHERE status = 'FAILED'
                          AND "updatedAt" > CURRENT_TIMESTAMP - make_interval(hours => :h))
  FROM "Job" GROUP BY backend
"""

_LATEST_COMPLETED = """
SELECT j.id, j."completedAt", j."durationInSeconds", j."priceInDollars", j.backend,
       a.name, d.title
  FROM "Job" j
  JOIN "Evaluation" e ON e.id = j."evaluationId"
  LEFT JOIN LATERAL (SELECT name FROM "AgentVersion" WHERE "agentId" = e."agentId"
                      ORDER BY version DESC LIMIT 1) a ON true
  LEFT JOIN LATERAL (SELECT title FROM "DocumentVersion" WHERE "documentId" = e."documentId"
                      ORDER BY version DESC LIMIT 1) d ON true
 WHERE j.status = 'COMPLETED'
 ORDER BY j."completedAt" DESC NULLS LAST, j.id
 LIMIT :limit
"""

_LATEST_FAILED = """
SELECT j.id, j."updatedAt", j.error, j.attempts, j.backend, j."evaluationId",
       j."agentEvalBatchId"
  FROM "Job" j
 WHERE j.status = 'FAILED'
 ORDER BY j."updatedAt" DESC, j.id
 LIMIT :limit
"""


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def queue_status(service: JobService, include_details: bool = False) -> dict[str, Any]:
    with service._tx() as session:
        rows = session.execute(text(_COUNTS), {"h": RECENT_HOURS}).all()
        by_backend = {
            backend: {
                "pending": pending,
                "running": running,
                "recentlyCompleted": done,
                "recentlyFailed": failed,
            }
            for backend, pending, running, done, failed in rows
        }
        completed = failed = []
        if include_details:
            completed = session.execute(text(_LATEST_COMPLETED), {"limit": DETAIL_ROWS}).all()
            failed = session.execute(text(_LATEST_FAILED), {"limit": DETAIL_ROWS}).all()
    summary = {
        key: sum(b[key] for b in by_backend.values())
        for key in ("pending", "running", "recentlyCompleted", "recentlyFailed")
    }
    pending, running = summary["pending"], summary["running"]
    out: dict[str, Any] = {
        "summary": summary,
        "health": {
            "isHealthy": pending < BACKLOG_LIMIT and (running > 0 or pending == 0),
            "backlogSize": pending,
            "processingRate": "Active" if running > 0 else "Idle",
        },
        "byBackend": by_backend,
    }
    if include_details:
        out["recentCompleted"] = [
            {
                "id": r[0],
                "completedAt": _json(r[1]),
                "duration": r[2],
                "cost": _json(r[3]),
                "backend": r[4],
                "agent": r[5],
                "document": r[6],
            }
            for r in completed
        ]
        out["recentFailed"] = [_failed(r) for r in failed]
    return out


def _failed(row: Any) -> dict[str, Any]:
    error = (row[2] or "").strip().splitlines()
    return {
        "id": row[0],
        "failedAt": _json(row[1]),
        "error": error[0] if error else None,
        "attempts": row[3],
        "backend": row[4],
        "evaluationId": row[5],
        "batchId": row[6],
    }


def failed_jobs(service: JobService, limit: int = 20) -> dict[str, Any]:
    if not 1 <= limit <= 100:
        raise InvalidRequest(f"limit must be 1-100, not {limit}")
    with service._tx() as session:
        rows = session.execute(text(_LATEST_FAILED), {"limit": limit}).all()
    return {"jobs": [_failed(r) for r in rows], "total": len(rows)}


def batch_results(service: JobService, batch_id: str) -> dict[str, Any]:
    progress = service.batch_progress(batch_id)
    data = {k: _json(v) for k, v in asdict(progress).items()}
    return {**data, "progress": round(progress.progress, 1), "isComplete": progress.is_complete}


def spawn_batch(
    service: JobService,
    agent_id: str,
    target_count: int | None = None,
    document_ids: list[str] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    created = service.create_batch_jobs(
        agent_id, target_count=target_count, document_ids=document_ids, name=name
    )
    return {
        "batchId": created.id,
        "agentId": created.agent_id,
        "jobCount": created.job_count,
        "fanOut": created.fan_out,
        "jobs": [{"id": j.id, "backend": j.backend} for j in created.jobs or []],
    }


def import_article(service: JobService, url: str, agent_ids: list[str]) -> dict[str, Any]:
    return service.create_import_job(url, agent_ids).as_dict()


def rerun_evaluation(service: JobService, document_id: str, agent_id: str) -> dict[str, Any]:
    """A new job for the evaluation of ``document_id`` by ``agent_id``; refused while one
    is waiting or running (the legacy rerun rule)."""
    with service._tx() as session:
        made = request_evaluation(service, session, document_id, agent_id)
    return {
        "jobId": made["job"]["id"],
        "evaluationId": made["evaluation"]["id"],
        "backend": made["job"]["backend"],
    }


__all__ = [
    "NotFound",
    "batch_results",
    "failed_jobs",
    "import_article",
    "queue_status",
    "rerun_evaluation",
    "spawn_batch",
]
