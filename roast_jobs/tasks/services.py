"""One JobService per worker process, sending with the worker's own Celery app."""

from __future__ import annotations

from functools import cache

from roast_jobs.service.job_service import JobService

from .worker import app


@cache
def job_service() -> JobService:
    return JobService(app=app)
