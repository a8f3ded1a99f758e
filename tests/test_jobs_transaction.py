"""Enqueue inside the caller's transaction: commit delivers, rollback leaves no trace."""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from roast_jobs.jobs import (
    JobManager,
    JobNotFound,
    JobState,
    TaskCall,
    enqueue_in,
    enqueue_in_async,
)
from roast_jobs.jobs.results import sqlalchemy_url
from tests.apps.jobs_app import job_record
from tests.conftest import BROKER_SCHEMA, DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, wait_until, worker_fixture
from tests.workers import CeleryWorker

__all__ = ["jm"]

QUEUE = new_queue("tx")
ENGINE = create_engine(sqlalchemy_url(DATABASE_URL))


worker = worker_fixture("tx", QUEUE)


def rows_for(task_ids: list[str]) -> int:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        return c.execute(
            f'SELECT count(*) FROM "{BROKER_SCHEMA}".message WHERE task_id = ANY(%s)',
            (task_ids,),
        ).fetchone()[0]


def barrier(worker: CeleryWorker) -> None:
    """Send a task after the ones under test, outside any transaction, and wait until the
    worker ran it and acked it. Claims go by priority, then in send order: by then the
    worker has claimed every same-priority message of the queue that it could see before.
    No sleep: an order, not a duration, says the worker had its chance."""
    label = uuid.uuid4().hex
    sent = job_record.apply_async((label,), queue=QUEUE)
    assert wait_until(lambda: runs(label) == 1, timeout=60), worker.log()[-2000:]
    assert wait_until(lambda: rows_for([sent.id]) == 0, timeout=60), worker.log()[-2000:]


def assert_never_visible(task_ids: list[str], label: str) -> None:
    """No row and no run. In this order: a message that got out (committed) has a row from
    its send until its ack, and its run is recorded before that ack; so either its row is
    seen here or its run is seen just after, however the timing falls."""
    assert rows_for(task_ids) == 0
    assert runs(label) == 0


def test_session_commit_delivers_and_worker_sees_nothing_before(
    jm: JobManager, worker: CeleryWorker
) -> None:
    name = uuid.uuid4().hex
    with Session(ENGINE) as session, session.begin():
        session.execute(text("SELECT 1"))  # the app's own writes would be here
        with enqueue_in(session):
            result = job_record.apply_async((name,), queue=QUEUE)
        barrier(worker)  # sent and run after it, while the transaction is still open
        assert_never_visible([result.id], name)  # invisible outside the transaction
    assert wait_until(lambda: runs(name) == 1, timeout=30), worker.log()[-2000:]
    assert wait_until(lambda: jm.get_job(result.id).state is JobState.COMPLETED)
    assert wait_until(lambda: rows_for([result.id]) == 0)  # acked: it runs no more
    assert runs(name) == 1


def test_session_rollback_leaves_no_trace(jm: JobManager, worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    with Session(ENGINE) as session:
        session.begin()
        with enqueue_in(session):
            result = job_record.apply_async((name,), queue=QUEUE)
            many = jm.send_many(job_record, [(name,)] * 100, queue=QUEUE)
        session.rollback()
    ids = [result.id, *(p.task_id for p in many)]
    assert len(set(ids)) == 101
    barrier(worker)
    assert_never_visible(ids, name)
    for job_id in (result.id, many[0].task_id, many[-1].task_id):
        with pytest.raises(JobNotFound):
            jm.get_job(job_id)


def test_error_in_the_block_rolls_back_with_the_transaction(jm: JobManager) -> None:
    with pytest.raises(RuntimeError, match="app failed"), Session(ENGINE) as session:
        with session.begin(), enqueue_in(session):
            result = job_record.apply_async(("never",), queue=QUEUE)
            raise RuntimeError("app failed")
    assert rows_for([result.id]) == 0


def test_workers_are_woken_at_commit_not_before() -> None:
    queue = f"tx-nobody-{uuid.uuid4().hex[:8]}"
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(DATABASE_URL, autocommit=True) as listener:
        listener.execute(f'LISTEN "{BROKER_SCHEMA}"')
        with psycopg.connect(DATABASE_URL) as app_conn:
            with enqueue_in(app_conn):
                job_record.apply_async(("woken",), queue=queue)
            # A notification committed after the send and before the commit: the wake-up
            # of the send must come after it, not before.
            with psycopg.connect(DATABASE_URL, autocommit=True) as other:
                other.execute("SELECT pg_notify(%s, %s)", (BROKER_SCHEMA, marker))
            app_conn.commit()

        def ours() -> list[str]:
            return [n.payload for n in got if n.payload in (marker, queue)]

        got: list[psycopg.Notify] = []
        for note in listener.notifies(timeout=60):  # stops as soon as both are in
            got.append(note)
            if len(ours()) == 2:
                break
    assert ours() == [marker, queue]


def test_manager_send_and_bulk_join_a_psycopg_transaction(
    jm: JobManager, worker: CeleryWorker
) -> None:
    name = uuid.uuid4().hex
    with psycopg.connect(DATABASE_URL) as app_conn:
        one = jm.send(job_record, {"label": name}, queue=QUEUE, into=app_conn)
        many = jm.send_many(
            job_record,
            [TaskCall(args=(name,), priority=i % 10) for i in range(200)],
            queue=QUEUE,
            into=app_conn,
        )
        assert rows_for([one, *(p.task_id for p in many)]) == 0
        app_conn.commit()
    assert wait_until(lambda: runs(name) == 201, timeout=60), worker.log()[-2000:]


def test_sqlalchemy_connection_works_too(worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    with ENGINE.begin() as conn, enqueue_in(conn, buffered=True) as batch:
        for _ in range(3):
            job_record.apply_async((name,), queue=QUEUE)
    assert [p.created for p in batch.results] == [True] * 3
    assert wait_until(lambda: runs(name) == 3, timeout=30)


def test_enqueue_in_refuses_what_is_not_a_connection() -> None:
    with pytest.raises(TypeError, match="SQLAlchemy Session or Connection"), enqueue_in("db"):
        pass
    sqlite = create_engine("sqlite://")
    with (
        sqlite.connect() as conn,
        pytest.raises(Exception, match="PostgreSQL"),
        enqueue_in(conn),
    ):
        job_record.apply_async(("x",), queue=QUEUE)


def test_async_session_commit_and_rollback(jm: JobManager, worker: CeleryWorker) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    # One label each: a run of the rolled-back job cannot pass for the committed one's.
    kept_label, dropped_label = uuid.uuid4().hex, uuid.uuid4().hex

    async def scenario() -> tuple[str, str]:
        engine = create_async_engine(sqlalchemy_url(DATABASE_URL))
        try:
            async with AsyncSession(engine) as session, session.begin():
                kept = await enqueue_in_async(
                    session, lambda: job_record.apply_async((kept_label,), queue=QUEUE).id
                )
            async with AsyncSession(engine) as session:
                await session.begin()
                dropped = await enqueue_in_async(
                    session, lambda: job_record.apply_async((dropped_label,), queue=QUEUE).id
                )
                await session.rollback()
        finally:
            await engine.dispose()
        return kept, dropped

    kept, dropped = asyncio.run(scenario())
    assert kept != dropped
    assert wait_until(lambda: runs(kept_label) == 1, timeout=30), worker.log()[-2000:]
    assert wait_until(lambda: rows_for([kept]) == 0)  # ran and acked
    barrier(worker)  # sent after both: the worker has claimed everything visible before it
    assert_never_visible([dropped], dropped_label)
    with pytest.raises(JobNotFound):
        jm.get_job(dropped)
    assert runs(kept_label) == 1
