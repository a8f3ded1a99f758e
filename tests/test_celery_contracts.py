"""Celery's contracts on this broker, with real ``celery worker`` processes: an expired
task ends REVOKED, delayed tasks are where the README says, and a prefetch-1 backlog
drains without waiting for the safety-net poll."""

from __future__ import annotations

import uuid

import pytest
from celery.exceptions import TaskRevokedError
from celery.result import ResultSet
from kombu import Connection

from roast_jobs.jobs import JobManager
from tests.apps.worker_app import add, app, mark, sleepy
from tests.conftest import BROKER_SCHEMA, broker_url
from tests.workers import CeleryWorker, wait_until

RESULT_TIMEOUT = 90.0  # waiting only, never asserted on


def new_queue(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def one_slot_worker(queue: str) -> CeleryWorker:
    """A worker with a single slot and prefetch 1 (Celery's advice for long tasks), and
    no safety-net poll within the test: only notifications and freed slots drive it."""
    return CeleryWorker(
        f"p1-{queue}",
        concurrency=1,
        args=["-Q", queue, "--prefetch-multiplier", "1"],
        env={"ROAST_JOBS_POLL_INTERVAL": "3600"},
    )


def test_an_expired_task_is_revoked_by_the_worker() -> None:
    queue = new_queue("p1")
    with one_slot_worker(queue) as worker:
        busy = [sleepy.apply_async((2.0, "busy"), queue=queue) for _ in range(2)]
        late = add.apply_async((1, 1), queue=queue, expires=1)
        with pytest.raises(TaskRevokedError):
            late.get(timeout=RESULT_TIMEOUT)
        assert late.state == "REVOKED"
        with JobManager(app) as jm:
            job = jm.get_job(late.id)
            assert (job.state.value, job.reason) == ("expired", "expired")
        for r in busy:
            assert r.get(timeout=RESULT_TIMEOUT) == "busy"
        assert f"Discarding revoked task: {add.name}[{late.id}]" in worker.log()


def test_a_prefetch_one_backlog_drains_without_the_poll() -> None:
    """Each finished task frees the slot: the next claim goes out at once, and the loop
    goes round to hand it to the idle child. Before, in a worker whose tick callbacks
    came out of their set in the wrong order, each task idled about 2 s in the pool;
    test_broker_acks.py proves the wake-up itself, whatever the order."""
    queue = new_queue("p1")
    results = ResultSet([add.apply_async((i, i), queue=queue) for i in range(60)])
    with one_slot_worker(queue):
        # One wait for all: a few seconds' work, two minutes when each task idles.
        assert results.get(timeout=RESULT_TIMEOUT) == [2 * i for i in range(60)]


def test_without_native_delay_countdown_tasks_wait_in_the_worker() -> None:
    """``native_delay=false``: Celery's usual behaviour, the worker holds ETA tasks in
    memory and ``celery inspect scheduled`` lists them."""
    queue = new_queue("nd")
    worker = CeleryWorker(
        f"nd-{queue}", args=["-Q", queue], env={"ROAST_JOBS_NATIVE_DELAY": "false"}
    )
    worker.start(timeout=120)
    try:
        with Connection(broker_url(BROKER_SCHEMA, native_delay="false")) as conn:
            r = app.send_task(mark.name, ("later",), queue=queue, countdown=300,
                              producer=conn.Producer())  # fmt: skip

        def scheduled() -> list[str]:
            replies = app.control.inspect([worker.hostname], timeout=2).scheduled() or {}
            return [e["request"]["id"] for e in replies.get(worker.hostname, [])]

        assert wait_until(lambda: r.id in scheduled(), timeout=60), worker.log()[-3000:]
        app.control.revoke(r.id)
    finally:
        worker.stop()


def test_with_native_delay_countdown_tasks_wait_in_the_database() -> None:
    """The default: the table holds them (a restart loses none, workers hold no memory
    for them); the job API shows them, ``inspect scheduled`` does not."""
    queue = new_queue("nd")
    worker = CeleryWorker(f"nd-{queue}", args=["-Q", queue])
    worker.start(timeout=120)
    try:
        r = mark.apply_async(("later",), queue=queue, countdown=300)
        with JobManager(app) as jm:
            assert jm.get_job(r.id).state.value == "scheduled"
            assert jm.get_queue_status(queue)[queue].scheduled == 1
            replies = wait_until(
                lambda: app.control.inspect([worker.hostname], timeout=2).scheduled(),
                timeout=60,
            )
            assert replies == {worker.hostname: []}
            jm.cancel_job(r.id)
    finally:
        worker.stop()
