"""Shared helpers of the job-feature tests: a JobManager, workers, polling."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from roast_jobs.jobs import JobManager
from tests.apps import jobs_app
from tests.workers import CeleryWorker, wait_until

__all__ = ["jm", "new_queue", "runs", "start_worker", "wait_until", "worker_fixture"]

T = TypeVar("T")


def new_queue(prefix: str = "jq") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def runs(label: str) -> int:
    return jobs_app.runs_of(label)


@pytest.fixture(scope="module")
def jm() -> Iterator[JobManager]:
    jobs_app.ensure_job_runs()
    with JobManager(jobs_app.app) as manager:
        yield manager


def start_worker(
    name: str, queue: str, concurrency: int = 2, app: str = "tests.apps.jobs_app"
) -> CeleryWorker:
    worker = CeleryWorker(name, app=app, concurrency=concurrency, args=["-Q", queue])
    worker.start(timeout=120)
    return worker


def worker_fixture(
    name: str, queue: str, app: str = "tests.apps.jobs_app"
) -> Callable[..., Iterator[CeleryWorker]]:
    """A module-scoped fixture: one worker of ``app`` on ``queue``."""

    @pytest.fixture(scope="module")
    def worker(jm: JobManager) -> Iterator[CeleryWorker]:
        w = start_worker(name, queue, app=app)
        try:
            yield w
        finally:
            w.stop()

    return worker
