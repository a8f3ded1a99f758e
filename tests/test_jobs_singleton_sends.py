"""Plain ``apply_async(..., singleton_key=k)``: a duplicate answers with the holder's
result; a task acked when it starts cannot take a key (it would not hold it while running).
"""

from __future__ import annotations

import logging
import uuid

import psycopg
import pytest
from celery import Celery

from roast_jobs.jobs import JobManager, TaskCall, enqueue_in
from tests.apps.facts_app import job_early_ack
from tests.apps.jobs_app import job_hold, job_record, record_run
from tests.conftest import BROKER_SCHEMA, DATABASE_URL, broker_url
from tests.jobs_support import jm, new_queue, wait_until, worker_fixture
from tests.workers import CeleryWorker

__all__ = ["jm"]

QUEUE = new_queue("sends")
IDLE = new_queue("sends-idle")


worker = worker_fixture("sends", QUEUE, app="tests.apps.facts_app")


def holders(key: str) -> list[str]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        rows = c.execute(
            f'SELECT task_id FROM "{BROKER_SCHEMA}".message WHERE singleton_key = %s', (key,)
        ).fetchall()
    return [r[0] for r in rows]


# -- a duplicate's result is the holder's ----------------------------------------------


def test_a_duplicate_apply_async_returns_the_holders_result(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key, name = uuid.uuid4().hex, uuid.uuid4().hex
    first = job_hold.apply_async((name,), queue=QUEUE, singleton_key=key)
    dup = job_hold.apply_async((name,), queue=QUEUE, singleton_key=key)
    assert dup.id == first.id
    assert (first.created, dup.created) == (True, False)
    record_run(None, f"release:{name}")
    assert dup.get(timeout=60) == "released"  # the holder's id runs: get() returns


def test_a_duplicate_inside_enqueue_in_returns_the_holders_result(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    with psycopg.connect(DATABASE_URL) as conn:
        with enqueue_in(conn) as block:
            first = job_record.apply_async(("t",), queue=IDLE, singleton_key=key)
            dup = job_record.apply_async(("t",), queue=IDLE, singleton_key=key)
        assert dup.id == first.id and dup.created is False
        assert [(p.created, p.holder) for p in block.results] == [(True, None), (False, first.id)]
        conn.rollback()
    assert holders(key) == []


def test_a_buffered_block_tells_duplicates_when_it_ends(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    with psycopg.connect(DATABASE_URL) as conn:
        with enqueue_in(conn, buffered=True) as block:
            first = job_record.apply_async(("b",), queue=IDLE, singleton_key=key)
            dup = job_record.apply_async(("b",), queue=IDLE, singleton_key=key)
            # Nothing is written before the block ends: the outcome is not known yet.
            assert first.created is None and dup.created is None
        assert [(p.created, p.holder) for p in block.results] == [(True, None), (False, first.id)]
        conn.rollback()


def test_a_plain_task_of_another_app_logs_who_holds_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign = Celery("foreign", broker=broker_url(BROKER_SCHEMA), set_as_current=False)
    foreign.conf.task_acks_late = True

    @foreign.task(name="tests.foreign.plain", shared=False)
    def plain(x: int) -> int:
        return x

    key = uuid.uuid4().hex
    first = plain.apply_async((1,), queue=IDLE, singleton_key=key)
    with caplog.at_level(logging.WARNING, logger="roast_jobs"):
        dup = plain.apply_async((1,), queue=IDLE, singleton_key=key)
    assert holders(key) == [first.id] and dup.id != first.id
    [record] = [r for r in caplog.records if dup.id in r.getMessage()]
    assert first.id in record.getMessage() and key in record.getMessage()


# -- a task acked early cannot take a key ------------------------------------------------


def test_an_early_ack_task_refuses_a_singleton_key(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    sends = [
        lambda: job_early_ack.apply_async(("x",), queue=IDLE, singleton_key=key),
        lambda: job_early_ack.apply_async(("x",), queue=IDLE, headers={"singleton_key": key}),
        lambda: jm.send(job_early_ack, {"label": "x"}, queue=IDLE, singleton_key=key),
        lambda: jm.send_many(job_early_ack, [TaskCall(args=("x",), singleton_key=key)], queue=IDLE),
    ]
    for send in sends:
        with pytest.raises(ValueError, match=r"job_early_ack.*acks_late=True.*task_acks_late"):
            send()
    assert holders(key) == []
    # Without a key it sends as usual.
    assert job_early_ack.apply_async(("x",), queue=IDLE).id


def test_a_plain_early_ack_task_of_another_app_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    foreign = Celery("foreign-early", broker=broker_url(BROKER_SCHEMA), set_as_current=False)

    @foreign.task(name="tests.foreign.early", shared=False)
    def early(x: int) -> int:
        return x

    key = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, logger="roast_jobs"):
        early.apply_async((1,), queue=IDLE, singleton_key=key)
    assert wait_until(lambda: holders(key))
    assert any(
        "tests.foreign.early" in r.getMessage() and "acks_late" in r.getMessage()
        for r in caplog.records
    )
