"""``GET /api/health/jobs``: the job system's health in one answer, from the database.

Each check passes or gives a reason: the database unreachable, a backlog over
``rollout_max_queue_depth``, a job stuck over ``rollout_stuck_seconds``, nothing finished
in the last 5 minutes while work waits, no live Celery worker while Celery jobs wait.
(A legacy worker heartbeat is not recorded yet, so that check is not made.)
"""

from __future__ import annotations

from typing import Any

from roast_jobs.config import get_settings
from roast_jobs.rollout import checks
from roast_jobs.rollout.status import collect

#: "Nothing finished lately": the window the health check looks back over.
IDLE_WINDOW_SECONDS = 300.0


def health_report(url: str) -> dict[str, Any]:
    settings = get_settings()
    try:
        status = collect(url, window_seconds=IDLE_WINDOW_SECONDS)
    except Exception as exc:  # the database is unreachable, or its schema is missing
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return _report([{"name": "database", "ok": False, "detail": first}])
    results = [{"name": "database", "ok": True, "detail": "reachable"}]
    for trigger in (
        *checks.queue_depth(status, settings),
        *checks.stuck_job(status, settings),
        *checks.celery_workers(status, settings),
    ):
        results.append({"name": trigger.name, "ok": not trigger.fired, "detail": trigger.detail})
    waiting = sum(b.pending for b in status.backends)
    finished = sum(b.finished for b in status.backends)
    idle = waiting > 0 and finished == 0
    results.append(
        {
            "name": "progress",
            "ok": not idle,
            "detail": f"{finished} finished in the last {IDLE_WINDOW_SECONDS:g} s, "
            f"{waiting} waiting",
        }
    )
    return _report(results, status.taken_at.isoformat())


def _report(results: list[dict[str, Any]], at: str | None = None) -> dict[str, Any]:
    failed = [r for r in results if not r["ok"]]
    return {
        "status": "degraded" if failed else "healthy",
        "reasons": [f"{r['name']}: {r['detail']}" for r in failed],
        "checks": results,
        "checkedAt": at,
    }
