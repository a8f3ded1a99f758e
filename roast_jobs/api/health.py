"""``GET /api/health/jobs``: the job system's health in one answer, from the database.

Each check passes or gives a reason: the database unreachable, a backlog over
``rollout_max_queue_depth``, a job stuck over ``rollout_stuck_seconds``, nothing finished
in the last 5 minutes while work waits, no live Celery worker while Celery jobs wait, no
live legacy worker while legacy jobs wait. A legacy worker is live while its
``"WorkerHeartbeat"`` row is younger than ``legacy_heartbeat_stale_seconds``
(``legacy.heartbeat``): a worker killed or hung stops beating, one stopped cleanly deletes
its row.
"""

from __future__ import annotations

from typing import Any

from roast_jobs.config import Settings, get_settings
from roast_jobs.db.models import Backend
from roast_jobs.db.session import transaction
from roast_jobs.legacy.heartbeat import live_workers
from roast_jobs.logs import first_line
from roast_jobs.rollout import checks
from roast_jobs.rollout.status import RolloutStatus, collect, duration

#: "Nothing finished lately": the window the health check looks back over.
IDLE_WINDOW_SECONDS = 300.0


def health_report(url: str) -> dict[str, Any]:
    settings = get_settings()
    try:
        status = collect(url, window_seconds=IDLE_WINDOW_SECONDS)
    except Exception as exc:  # the database is unreachable, or its schema is missing
        return _report([{"name": "database", "ok": False, "detail": first_line(exc)}])
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
    results.append(legacy_workers_check(url, status, settings))
    return _report(results, status.taken_at.isoformat())


def legacy_workers_check(url: str, status: RolloutStatus, settings: Settings) -> dict[str, Any]:
    """Fails while legacy jobs wait and no legacy worker's heartbeat is fresh."""
    name = "legacy_workers"
    waiting = status.backend(Backend.LEGACY.value).pending
    fresh = settings.legacy_heartbeat_stale_seconds
    try:
        with transaction(url) as session:
            workers = live_workers(session, fresh)
    except Exception as exc:
        detail = f"{waiting} legacy job(s) waiting; heartbeats unreadable: {first_line(exc)}"
        return {"name": name, "ok": waiting == 0, "detail": detail}
    detail = f"{waiting} legacy job(s) waiting, {workers.live} live legacy worker(s)"
    if workers.live:
        detail += f" running {workers.running} of {workers.slots} slots"
    if workers.newest_age_seconds is None:
        detail += "; no heartbeat recorded"
    else:
        detail += f"; newest heartbeat {duration(workers.newest_age_seconds)} ago"
    failed = waiting > 0 and workers.live == 0
    if failed:
        detail += f" (stale after {fresh:g} s)"
    return {"name": name, "ok": not failed, "detail": detail}


def _report(results: list[dict[str, Any]], at: str | None = None) -> dict[str, Any]:
    failed = [r for r in results if not r["ok"]]
    return {
        "status": "degraded" if failed else "healthy",
        "reasons": [f"{r['name']}: {r['detail']}" for r in failed],
        "checks": results,
        "checkedAt": at,
    }
