"""The HTTP API (FastAPI): ``create_app(url)``; ``roast-jobs api`` serves it with uvicorn.

API keys (``Authorization: Bearer rmp_...``) name the caller. A wrong or missing key is
401; a resource of someone else is 404, as an unknown one is, so ids do not leak; an admin
route for a non-admin is 403; bad input is a 4xx with ``{"error": ...}`` and writes nothing.
Each area is a router of its own module; this one puts them together.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI

from roast_jobs.logs import first_line
from roast_jobs.service.job_service import JobService

from . import admin, batches, dashboard, errors, evaluations, imports, jobs, monitor, system
from .deps import ApiContext, no_unknown_query

log = logging.getLogger("roast_jobs.api")


def create_app(url: str) -> FastAPI:
    service = JobService(url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The broker link starts now rather than inside the first request's transaction
        # (its start opens connections and may create the broker's schema). A database
        # that is not there yet only delays it to the first use.
        try:
            await anyio.to_thread.run_sync(lambda: service.manager)
        except Exception as exc:
            log.warning("job manager not started (%s): it starts on first use", first_line(exc))
        yield
        service.close()

    app = FastAPI(
        title="roast-jobs",
        summary="RoastMyPost's jobs on two backends (legacy table and Celery on PostgreSQL)",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(no_unknown_query)],
    )
    app.state.ctx = ApiContext(url=url, service=service)
    errors.install(app)
    for module in (jobs, batches, evaluations, imports, monitor, admin, system, dashboard):
        app.include_router(module.router, responses=errors.RESPONSES)
    return app
