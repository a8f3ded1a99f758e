"""Bulk send of 10,000 tasks, all run once; dead letters from Python; retry policies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from roast_jobs.jobs import DeadLetterNotFound, DeadLetters, JobManager, JobState, TaskCall
from roast_jobs.jobs.retry import RetryPolicy
from tests.apps.jobs_app import JOB_RUNS, job_fail, job_record, job_reject
from tests.conftest import BROKER_SCHEMA, DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, wait_until, worker_fixture
from tests.workers import CeleryWorker

__all__ = ["jm"]

QUEUE = new_queue("bulk")


worker = worker_fixture("bulk", QUEUE)


def run_counts(label: str) -> tuple[int, int]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        row = c.execute(
            f"SELECT count(*), count(DISTINCT task_id) FROM {JOB_RUNS} WHERE label = %s",
            (label,),
        ).fetchone()
    return row[0], row[1]


def test_ten_thousand_bulk_tasks_all_run_once(jm: JobManager, worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    calls = [TaskCall(args=(name, i), priority=i % 10) for i in range(10_000)]
    published = jm.send_many(job_record, calls, queue=QUEUE)
    assert len(published) == 10_000 and all(p.created for p in published)
    assert len({p.task_id for p in published}) == 10_000
    assert wait_until(lambda: run_counts(name)[0] >= 10_000, timeout=240, every=1), worker.log()[
        -2000:
    ]
    assert wait_until(
        lambda: (
            jm.get_queue_status(QUEUE).get(QUEUE) is None
            or jm.get_queue_status(QUEUE)[QUEUE].waiting == 0
        ),
        timeout=60,
    )
    assert run_counts(name) == (10_000, 10_000)
    sample = published[1234].task_id
    job = jm.get_job(sample)
    assert job.state is JobState.COMPLETED and job.result == 1234 and job.args == [name, 1234]


def test_bulk_with_per_task_delays_and_priorities(jm: JobManager) -> None:
    idle = new_queue("bulk-idle")
    soon = datetime.now(UTC) + timedelta(hours=1)
    calls = [
        TaskCall(args=("d", 0), priority=9),
        TaskCall(kwargs={"label": "d", "n": 1}, countdown=600),
        TaskCall(args=("d", 2), eta=soon),
        ("d", 3),
        {"label": "d", "n": 4},
    ]
    published = jm.send_many(job_record, calls, queue=idle, priority=2)
    jobs = [jm.get_job(p.task_id) for p in published]
    assert [j.state for j in jobs] == [
        JobState.CREATED,
        JobState.SCHEDULED,
        JobState.SCHEDULED,
        JobState.CREATED,
        JobState.CREATED,
    ]
    assert [j.priority for j in jobs] == [9, 2, 2, 2, 2]
    assert abs((jobs[2].run_at - soon).total_seconds()) < 1
    with pytest.raises(TypeError, match="bulk item"):
        jm.send_many(job_record, [42], queue=idle)  # type: ignore[list-item]


def test_bulk_of_non_json_arguments_uses_kombus_encoder(
    jm: JobManager, worker: CeleryWorker
) -> None:
    name = uuid.uuid4().hex
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    calls = [TaskCall(args=(name,), kwargs={"n": 0})] * 60
    calls.append(TaskCall(args=(name,), kwargs={"n": when}))
    published = jm.send_many(job_record, calls, queue=QUEUE)
    assert wait_until(lambda: run_counts(name)[0] == 61, timeout=60), worker.log()[-2000:]
    assert published[-1].created


def test_dead_letters_from_python(jm: JobManager, worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    job_id = jm.send(job_reject, {"label": name}, queue=QUEUE)
    assert wait_until(lambda: jm.get_job(job_id).state is JobState.DEAD_LETTER, timeout=60)
    letters = DeadLetters(jm.link)
    [letter] = [d for d in letters.list(queue=QUEUE) if d.task_id == job_id]
    assert letter.reason == "rejected" and letter.task == job_reject.name
    assert letter.kwargs == {"label": name} and letter.delivered_to
    assert letters.get(letter.id).task_id == job_id
    with pytest.raises(DeadLetterNotFound):
        letters.get(-999)
    with pytest.raises(DeadLetterNotFound):
        letters.redrive([letter.id, -999])  # nothing moves when one id is unknown
    assert letters.get(letter.id)
    with pytest.raises(ValueError, match="all=True"):
        letters.purge()
    [(_message_id, queue, task_id)] = letters.redrive([letter.id])
    assert (queue, task_id) == (QUEUE, job_id)
    assert wait_until(lambda: runs(name) == 2, timeout=60)
    assert wait_until(lambda: jm.get_job(job_id).state is JobState.DEAD_LETTER, timeout=60)
    again = [d for d in letters.list(queue=QUEUE) if d.task_id == job_id]
    assert len(again) == 1 and letters.purge([again[0].id]) == 1
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        left = c.execute(
            f'SELECT count(*) FROM "{BROKER_SCHEMA}".dead_letter WHERE task_id = %s', (job_id,)
        ).fetchone()[0]
    assert left == 0


def test_retry_policy_backs_off_with_jitter() -> None:
    policy = RetryPolicy(limit=3, delay=30, backoff=True, delay_max=100)
    for retries, base in ((0, 30), (1, 60), (2, 100), (5, 100)):
        for _ in range(50):
            assert base / 2 <= policy.countdown(retries) <= base
    flat = RetryPolicy(delay=5, backoff=False, jitter=False)
    assert [flat.countdown(n) for n in range(3)] == [5, 5, 5]
    assert RetryPolicy.from_settings() == RetryPolicy(3, 30.0, True, 3600.0)
    with pytest.raises(ValueError):
        RetryPolicy(limit=-1)


def test_retry_limit_per_send_overrides_the_tasks(jm: JobManager, worker: CeleryWorker) -> None:
    once, never = uuid.uuid4().hex, uuid.uuid4().hex
    a = jm.send(job_fail, {"label": once}, queue=QUEUE, retry_limit=1, retry_delay=0.1)
    b = jm.send(job_fail, {"label": never}, queue=QUEUE, retry_limit=0)
    for job_id in (a, b):
        assert wait_until(lambda j=job_id: jm.get_job(j).state is JobState.FAILED, timeout=60)
    assert (runs(once), runs(never)) == (2, 1)
    assert jm.get_job(a).retry_count == 1
