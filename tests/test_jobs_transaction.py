"""Enqueue inside the caller's transaction: commit delivers, rollback leaves no trace."""

from __future__ import annotations

import asyncio
import select
import time
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


def test_session_commit_delivers_and_worker_sees_nothing_before(
    jm: JobManager, worker: CeleryWorker
) -> None:
    name = uuid.uuid4().hex
    with Session(ENGINE) as session, session.begin():
        session.execute(text("SELECT 1"))  # the app's own writes would be here
        with enqueue_in(session):
            result = job_record.apply_async((name,), queue=QUEUE)
        assert rows_for([result.id]) == 0  # invisible outside the transaction
        time.sleep(1.5)  # a worker polling or listening has had every chance
        assert runs(name) == 0
    assert wait_until(lambda: runs(name) == 1, timeout=30), worker.log()[-2000:]
    assert wait_until(lambda: jm.get_job(result.id).state is JobState.COMPLETED)


def test_session_rollback_leaves_no_trace(jm: JobManager, worker: CeleryWorker) -> None:
    name = uuid.uuid4().hex
    with Session(ENGINE) as session:
        session.begin()
        with enqueue_in(session):
            result = job_record.apply_async((name,), queue=QUEUE)
            many = jm.send_many(job_record, [(name,)] * 100, queue=QUEUE)
        session.rollback()
    ids = [result.id, *(p.task_id for p in many)]
    assert rows_for(ids) == 0
    time.sleep(1.0)
    assert runs(name) == 0
    with pytest.raises(JobNotFound):
        jm.get_job(result.id)


def test_error_in_the_block_rolls_back_with_the_transaction(jm: JobManager) -> None:
    with pytest.raises(RuntimeError, match="app failed"), Session(ENGINE) as session:
        with session.begin(), enqueue_in(session):
            result = job_record.apply_async(("never",), queue=QUEUE)
            raise RuntimeError("app failed")
    assert rows_for([result.id]) == 0


def test_workers_are_woken_at_commit_not_before() -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as listener:
        listener.execute(f'LISTEN "{BROKER_SCHEMA}"')
        with psycopg.connect(DATABASE_URL) as app_conn:
            with enqueue_in(app_conn):
                job_record.apply_async(("woken",), queue="tx-nobody")
            assert not select.select([listener.fileno()], [], [], 0.5)[0]
            assert not list(listener.notifies(timeout=0.1))
            app_conn.commit()
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.payload for n in notes] == ["tx-nobody"]


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


def test_async_session_commit_and_rollback(worker: CeleryWorker) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    name = uuid.uuid4().hex

    async def scenario() -> tuple[str, str]:
        engine = create_async_engine(sqlalchemy_url(DATABASE_URL))
        try:
            async with AsyncSession(engine) as session, session.begin():
                kept = await enqueue_in_async(
                    session, lambda: job_record.apply_async((name,), queue=QUEUE).id
                )
            async with AsyncSession(engine) as session:
                await session.begin()
                dropped = await enqueue_in_async(
                    session, lambda: job_record.apply_async((name,), queue=QUEUE).id
                )
                await session.rollback()
        finally:
            await engine.dispose()
        return kept, dropped

    kept, dropped = asyncio.run(scenario())
    assert rows_for([dropped]) == 0
    assert wait_until(lambda: runs(name) == 1, timeout=30), worker.log()[-2000:]
    assert wait_until(lambda: rows_for([kept]) == 0)  # ran and acked
