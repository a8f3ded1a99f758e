"""Health, Prometheus metrics and the rollout flags: what operators and probes call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from roast_jobs.service import flags

from .deps import Admin, Body, Service, Url
from .health import health_report

router = APIRouter()


class FlagsBody(Body):
    rolloutPercent: int = Field(ge=0, le=100, description="0 turns Celery off")


@router.get("/api/admin/flags", tags=["admin"])
def get_flags(_who: Admin, url: Url) -> dict[str, Any]:
    """The feature flags that pick each new job's backend."""
    return flags.from_values(flags.read_table(url)).as_dict()


@router.put("/api/admin/flags", tags=["admin"])
def put_flags(body: FlagsBody, who: Admin, url: Url, service: Service) -> dict[str, Any]:
    """Set the rollout percentage (recorded with who and when)."""
    flags.rollout(body.rolloutPercent, f"api:{who.user_id}", url)
    service.flags.invalidate()
    return flags.from_values(flags.read_table(url)).as_dict()


@router.get("/api/health/jobs", tags=["health"])
def health(url: Url) -> JSONResponse:
    """200 healthy, or 503 degraded with each reason (no key needed: probes call it)."""
    report = health_report(url)
    return JSONResponse(report, 200 if report["status"] == "healthy" else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
def metrics(url: Url) -> Response:
    """Prometheus metrics, read from the database at each scrape."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from roast_jobs.metrics import registry

    return Response(generate_latest(registry(url)), media_type=CONTENT_TYPE_LATEST)
