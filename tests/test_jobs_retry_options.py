"""retry_job sends a job again as it was first sent: singleton key, per-send retry policy,
priority, time limits, queue, and the same expiry window (from the retry, not the past)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from roast_jobs.jobs import InvalidTransition, JobManager, JobState
from roast_jobs.jobs.state import task_call
from tests.apps.facts_app import job_fail_then_hold
from tests.apps.jobs_app import job_record, record_run
from tests.conftest import BROKER_SCHEMA, DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, wait_until, worker_fixture
from tests.workers import CeleryWorker

__all__ = ["jm"]

QUEUE = new_queue("retry-opts")
IDLE = new_queue("retry-opts-idle")


worker = worker_fixture("retryopts", QUEUE, app="tests.apps.facts_app")


def payload_of(task_id: str) -> tuple[int, str]:
    """(priority, payload) of the job's message row."""
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        return c.execute(
            f'SELECT priority, payload FROM "{BROKER_SCHEMA}".message WHERE task_id = %s',
            (task_id,),
        ).fetchone()


def message(task_id: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(priority, headers, properties) of the job's message row."""
    priority, payload = payload_of(task_id)
    decoded = json.loads(payload)
    return priority, decoded["headers"], decoded["properties"]


def state_is(jm: JobManager, job_id: str, want: JobState) -> bool:
    return wait_until(lambda: jm.get_job(job_id).state is want)


def test_retry_of_a_failed_job_sends_it_with_every_original_option(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key, name = uuid.uuid4().hex, uuid.uuid4().hex
    job_id = jm.send(
        job_fail_then_hold, {"label": name}, queue=QUEUE, singleton_key=key, priority=6,
        retry_limit=0, time_limit=60, soft_time_limit=50, expires=3600,
    )  # fmt: skip
    assert state_is(jm, job_id, JobState.FAILED), worker.log()[-3000:]
    assert runs(name) == 1  # retry_limit=0: no retries
    assert jm.retry_job(job_id) == job_id
    assert state_is(jm, job_id, JobState.ACTIVE), worker.log()[-3000:]  # the rerun waits
    again = jm.send(job_record, {"label": name}, queue=QUEUE, singleton_key=key)
    assert (again, again.created) == (job_id, False)  # the rerun holds the key
    priority, headers, _props = message(job_id)
    assert priority == 6 and headers["timelimit"] == [60, 50]
    assert headers["roast_retry"] == {"limit": 0}
    # The original hour of validity, counted from the retry: not already past.
    expires = datetime.fromisoformat(headers["expires"])
    assert datetime.now(UTC) < expires < datetime.now(UTC) + timedelta(hours=1)
    record_run(None, f"release:{name}")
    assert state_is(jm, job_id, JobState.FAILED), worker.log()[-3000:]
    assert runs(name) == 2  # the per-send limit of 0 still applies to the rerun


def test_retry_of_a_job_cancelled_before_it_ran_keeps_its_options(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    job_id = jm.send(
        job_fail_then_hold, {"label": "c"}, queue=IDLE, singleton_key=key, priority=3,
        retry_limit=1, time_limit=60, countdown=300,
    )  # fmt: skip
    assert jm.cancel_job(job_id).state is JobState.CANCELLED
    new_id = jm.retry_job(job_id)
    assert new_id != job_id
    job = jm.get_job(new_id)
    # Due now (a countdown is not carried over), with the original key and options.
    assert (job.state, job.queue, job.singleton_key, job.priority) == (
        JobState.CREATED, IDLE, key, 3,
    )  # fmt: skip
    _priority, headers, _props = message(new_id)
    assert headers["roast_retry"] == {"limit": 1} and headers["timelimit"] == [60, None]
    jm.cancel_job(new_id)


def test_retry_is_refused_while_another_job_holds_the_key(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key, name = uuid.uuid4().hex, uuid.uuid4().hex
    job_id = jm.send(job_fail_then_hold, {"label": name}, queue=QUEUE, singleton_key=key,
                     retry_limit=0)  # fmt: skip
    assert state_is(jm, job_id, JobState.FAILED), worker.log()[-3000:]
    holder = jm.send(job_record, {"label": name}, queue=QUEUE, singleton_key=key, countdown=600)
    assert holder.created
    with pytest.raises(InvalidTransition, match=holder):
        jm.retry_job(job_id)
    assert jm.get_job(job_id).state is JobState.FAILED and runs(name) == 1
    jm.cancel_job(holder)


def test_retry_of_an_expired_job_sends_its_message_again_without_the_expiry(
    jm: JobManager,
) -> None:
    key = uuid.uuid4().hex
    job_id = jm.send(job_record, {"label": "e", "n": 5}, queue=IDLE, singleton_key=key,
                     expires=0.2)  # fmt: skip
    assert state_is(jm, job_id, JobState.EXPIRED)
    assert jm.retry_job(job_id) == job_id
    job = jm.get_job(job_id)
    assert (job.state, job.singleton_key) == (JobState.CREATED, key)
    _priority, payload = payload_of(job_id)
    assert task_call(payload) == (job_record.name, [], {"label": "e", "n": 5})
    assert json.loads(payload)["headers"].get("expires") is None
    jm.cancel_job(job_id)
