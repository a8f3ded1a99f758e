"""Job times and states when the database sessions are not in UTC.

Celery writes ``date_done`` into a ``timestamp without time zone`` column; what lands
there depends on the writing session's ``TimeZone``. Here the worker's sessions run in
New York (behind UTC) and the job API's in Tokyo (ahead of it), as with a server, role
or ``PGTZ`` setting that is not UTC; times and states must still be the true ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from celery import current_app, states

from roast_jobs.config import get_settings
from roast_jobs.jobs import JobManager, JobState
from roast_jobs.tasks.app import make_celery
from tests.apps import jobs_app
from tests.conftest import DATABASE_URL
from tests.jobs_support import new_queue, wait_until
from tests.workers import CeleryWorker

QUEUE = new_queue("tz")
WRITER_ZONE = "America/New_York"
READER_ZONE = "Asia/Tokyo"
RECORD = "tests.apps.jobs_app.job_record"
REJECT = "tests.apps.jobs_app.job_reject"


def zoned_url(zone: str) -> str:
    """DATABASE_URL whose sessions start in ``zone`` (libpq ``options``)."""
    sep = "&" if "?" in DATABASE_URL else "?"
    return f"{DATABASE_URL}{sep}options=-cTimeZone%3D{zone}"


@pytest.fixture(scope="module")
def reader() -> Iterator[JobManager]:
    """A JobManager on an app of its own whose sessions are in Tokyo."""
    jobs_app.ensure_job_runs()
    settings = get_settings().model_copy(update={"database_url": zoned_url(READER_ZONE)})
    previous = current_app._get_current_object()
    app = make_celery(settings, main="tz-reader")
    previous.set_current()  # make_celery made its app the current one
    with JobManager(app) as manager:
        assert manager.link.fetch("SHOW TimeZone") == [(READER_ZONE,)]
        yield manager


@pytest.fixture(scope="module")
def worker(reader: JobManager) -> Iterator[CeleryWorker]:
    """A worker whose sessions (broker and results) are in New York."""
    w = CeleryWorker(
        "tz",
        app="tests.apps.jobs_app",
        args=["-Q", QUEUE],
        env={"DATABASE_URL": zoned_url(WRITER_ZONE)},
    )
    w.start(timeout=120)
    try:
        yield w
    finally:
        w.stop()


def done(reader: JobManager, job_id: str) -> bool:
    return reader.app.AsyncResult(job_id).state in states.READY_STATES


def test_a_finished_jobs_times_are_in_order(reader: JobManager, worker: CeleryWorker) -> None:
    job_id = reader.send(RECORD, {"label": uuid.uuid4().hex, "n": 1}, queue=QUEUE)
    assert wait_until(lambda: done(reader, job_id)), worker.log()[-3000:]
    job = reader.get_job(job_id)
    assert job.state is JobState.COMPLETED
    assert job.created_at and job.started_at and job.completed_at
    assert job.created_at <= job.started_at <= job.completed_at <= datetime.now(UTC)


def test_completed_jobs_count_in_the_status_window(
    reader: JobManager, worker: CeleryWorker
) -> None:
    job_id = reader.send(RECORD, {"label": uuid.uuid4().hex, "n": 2}, queue=QUEUE)
    assert wait_until(lambda: done(reader, job_id)), worker.log()[-3000:]
    status = reader.get_queue_status(QUEUE).get(QUEUE)
    assert status is not None and status.completed >= 1


def test_a_success_after_a_burial_reads_completed(reader: JobManager, worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    job_id = reader.send(REJECT, {"label": name}, queue=QUEUE)
    assert wait_until(lambda: reader.get_job(job_id).state is JobState.DEAD_LETTER), worker.log()[
        -3000:
    ]
    # The same id sent again as a task that succeeds: its result is newer than the burial.
    reader.send(RECORD, {"label": name, "n": 7}, queue=QUEUE, task_id=job_id)
    assert wait_until(lambda: reader.app.AsyncResult(job_id).state == states.SUCCESS)
    job = reader.get_job(job_id)
    assert (job.state, job.result) == (JobState.COMPLETED, 7)
