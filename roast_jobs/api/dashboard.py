"""The migration dashboard: ``GET /dashboard`` (one page, its script and stylesheet) and
the two admin routes it reads besides the existing ones: ``GET /api/admin/rollout`` (the
``roast-jobs rollout status`` snapshot and the ``rollout check`` verdict) and
``GET /api/admin/jobs/metrics`` (throughput and pickup latency per backend over time).

The page itself needs no key: it asks for the admin API key, keeps it in the browser's
sessionStorage and sends it on every call, so every figure and action stays behind the
admin check of its route.
"""

# No "from __future__ import annotations": FastAPI reads dependencies from annotations.

from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response

from roast_jobs.rollout import checks, series
from roast_jobs.rollout.status import collect

from .deps import Admin, Url

router = APIRouter()

_STATIC = files("roast_jobs.api") / "static"
#: What the page may load, and as what: nothing else is served from the folder.
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/dashboard", include_in_schema=False)
def page() -> Response:
    """The dashboard (no key needed: the page asks for one)."""
    body = (_STATIC / "dashboard.html").read_bytes()
    return Response(body, media_type="text/html; charset=utf-8", headers=_NO_CACHE)


@router.get("/dashboard/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    kind = _ASSETS.get(name)
    if kind is None:
        raise HTTPException(404, f"no dashboard asset {name!r}")
    body = (_STATIC / name).read_bytes()
    return Response(body, media_type=f"{kind}; charset=utf-8", headers=_NO_CACHE)


@router.get("/api/admin/jobs/metrics", tags=["admin"])
def job_metrics(
    _who: Admin,
    url: Url,
    window: Annotated[
        int, Query(ge=series.MIN_WINDOW, le=series.MAX_WINDOW, description="seconds")
    ] = 3600,
    bucket: Annotated[
        int, Query(ge=series.MIN_BUCKET, le=series.MAX_BUCKET, description="seconds")
    ] = 60,
) -> dict[str, Any]:
    """Per backend and per bucket of the last ``window`` seconds: jobs finished
    (COMPLETED, FAILED) and pickup latency (``startedAt - createdAt``: p50, p95,
    average), plus totals over the window. Fewer than 500 buckets."""
    try:
        return series.job_series(url, window, bucket).as_dict()
    except series.SeriesError as exc:  # a rule between window and bucket: 400
        raise HTTPException(400, str(exc)) from None


@router.get("/api/admin/rollout", tags=["admin"])
def rollout(_who: Admin, url: Url) -> dict[str, Any]:
    """The rollout at a glance: flags, jobs by backend and state, migration progress,
    the broker's queue, the oldest waiting and running jobs, the latest failures, and
    the ``roast-jobs rollout check`` verdict with every trigger."""
    status = collect(url)
    verdict = checks.evaluate(status)
    snapshot = status.as_dict()
    return {
        "takenAt": snapshot["taken_at"],
        "flags": snapshot["flags"],
        "backends": snapshot["backends"],
        "oldest": {"running": snapshot["oldest_running"], "pending": snapshot["oldest_pending"]},
        "migration": snapshot["migration"],
        "broker": snapshot["broker"],
        "latestFailures": [f.as_dict() for f in series.latest_failures(url)],
        "check": {
            "verdict": "healthy" if verdict.healthy else "unhealthy",
            "fired": [t.name for t in verdict.fired],
            "triggers": [t.as_dict() for t in verdict.triggers],
            "windowSeconds": verdict.window_seconds,
        },
    }
