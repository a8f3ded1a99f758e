"""The HTTP API (FastAPI): ``create_app(url)``; ``roast-jobs api`` serves it with uvicorn.

What it has so far: API keys (``Authorization: Bearer rmp_...``), ``GET /api/jobs/{id}``
(the legacy shape, owner only), the flags for admins, ``GET /api/health/jobs`` and
``GET /metrics``. A wrong or missing key is 401; a resource of someone else is 404, as
an unknown one is, so ids do not leak; an admin route for a non-admin is 403.
"""

# No "from __future__ import annotations": FastAPI reads the dependencies from the
# annotations, and these name closures (caller, admin) that only exist at definition time.

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records
from roast_jobs.service import api_keys, flags
from roast_jobs.service.api_keys import Caller
from roast_jobs.service.job_service import JobService

from .health import health_report

_bearer = HTTPBearer(auto_error=False, description="An API key: rmp_...")

_JOB_OWNER = """
SELECT d."submittedById" FROM "Job" j
  JOIN "Evaluation" e ON e.id = j."evaluationId"
  JOIN "Document" d ON d.id = e."documentId"
 WHERE j.id = :id
"""


class FlagsBody(BaseModel):
    rolloutPercent: int = Field(ge=0, le=100, description="0 turns Celery off")


def create_app(url: str) -> FastAPI:
    service = JobService(url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="roast-jobs",
        summary="RoastMyPost's jobs on two backends (legacy table and Celery on PostgreSQL)",
        version="0.1.0",
        lifespan=lifespan,
    )

    def session() -> Iterator[Session]:
        with transaction(url) as s:
            yield s

    def caller(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        found = None
        if creds is not None and creds.scheme.lower() == "bearer":
            with transaction(url) as s:
                found = api_keys.authenticate(s, creds.credentials)
        if found is None:
            raise HTTPException(
                401, "a valid API key is needed: Authorization: Bearer rmp_...",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        return found

    def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if not who.is_admin:
            raise HTTPException(403, "admins only")
        return who

    @app.exception_handler(HTTPException)
    def _error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(
        job_id: str,
        who: Annotated[Caller, Depends(caller)],
        s: Annotated[Session, Depends(session)],
    ) -> dict[str, Any]:
        """A job, as the legacy route shows it, plus its backend (the document's owner
        only, or an admin)."""
        owner = s.execute(text(_JOB_OWNER), {"id": job_id}).scalar()
        if owner is None or (owner != who.user_id and not who.is_admin):
            raise HTTPException(404, f"job {job_id!r} not found")
        try:
            return service.get_job_status(job_id)
        except job_records.JobNotFound:
            raise HTTPException(404, f"job {job_id!r} not found") from None

    @app.get("/api/admin/flags", tags=["admin"])
    def get_flags(_who: Annotated[Caller, Depends(admin)]) -> dict[str, Any]:
        """The feature flags that pick each new job's backend."""
        return flags.from_values(flags.read_table(url)).as_dict()

    @app.put("/api/admin/flags", tags=["admin"])
    def put_flags(body: FlagsBody, who: Annotated[Caller, Depends(admin)]) -> dict[str, Any]:
        """Set the rollout percentage (recorded with who and when)."""
        flags.rollout(body.rolloutPercent, f"api:{who.user_id}", url)
        service.flags.invalidate()
        return flags.from_values(flags.read_table(url)).as_dict()

    @app.get("/api/health/jobs", tags=["health"])
    def health() -> JSONResponse:
        """200 healthy, or 503 degraded with each reason (no key needed: probes call it)."""
        report = health_report(url)
        return JSONResponse(report, 200 if report["status"] == "healthy" else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics, read from the database at each scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from roast_jobs.metrics import registry

        return Response(generate_latest(registry(url)), media_type=CONTENT_TYPE_LATEST)

    return app
