"""Singleton keys: one live job per (queue, key), race-free, freed when the job ends."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import psycopg

from roast_jobs.jobs import JobManager, JobState, TaskCall
from tests.apps.jobs_app import job_flaky, job_hold, job_record, record_run
from tests.conftest import BROKER_SCHEMA, DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, wait_until, worker_fixture
from tests.workers import CeleryWorker

__all__ = ["jm"]

QUEUE = new_queue("single")
IDLE = new_queue("single-idle")


worker = worker_fixture("single", QUEUE)


def holders(key: str) -> list[tuple[str, str]]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        rows = c.execute(
            f'SELECT queue, task_id FROM "{BROKER_SCHEMA}".message WHERE singleton_key = %s',
            (key,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_second_send_returns_the_holder_until_it_ends(jm: JobManager, worker: CeleryWorker) -> None:
    key, name = f"batch-{uuid.uuid4().hex}", uuid.uuid4().hex
    first = jm.send(job_hold, {"label": name}, queue=QUEUE, singleton_key=key)
    assert first.created
    assert wait_until(lambda: jm.get_job(first).state is JobState.ACTIVE)
    again = jm.send(job_hold, {"label": name}, queue=QUEUE, singleton_key=key)
    assert (again, again.created) == (first, False)  # running holds the key
    record_run(None, f"release:{name}")
    assert wait_until(lambda: jm.get_job(first).state is JobState.COMPLETED)
    after = jm.send(job_record, {"label": name}, queue=QUEUE, singleton_key=key)
    assert after.created and after != first  # freed when it ended


def test_waiting_and_delayed_jobs_hold_their_key(jm: JobManager) -> None:
    for options in ({}, {"countdown": 300}):
        key = uuid.uuid4().hex
        first = jm.send(job_record, {"label": "w"}, queue=IDLE, singleton_key=key, **options)
        second = jm.send(job_record, {"label": "w"}, queue=IDLE, singleton_key=key)
        assert (second, second.created) == (first, False)
        # Plain Celery works too: the send is dropped.
        job_record.apply_async(("w",), queue=IDLE, singleton_key=key)
        assert holders(key) == [(IDLE, first)]
        jm.cancel_job(first)  # cancelling frees it
        assert jm.send(job_record, {"label": "w"}, queue=IDLE, singleton_key=key).created


def test_keys_are_per_queue(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    a = jm.send(job_record, {"label": "q"}, queue=IDLE, singleton_key=key)
    b = jm.send(job_record, {"label": "q"}, queue=f"{IDLE}-other", singleton_key=key)
    assert a.created and b.created and a != b


def test_concurrent_threads_make_exactly_one_job(jm: JobManager) -> None:
    key = uuid.uuid4().hex
    got: list[str] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        for _ in range(5):
            got.append(jm.send(job_record, {"label": "t"}, queue=IDLE, singleton_key=key))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 40 and len(set(got)) == 1
    assert holders(key) == [(IDLE, got[0])]


def _send_from_process(key: str, queue: str, out: multiprocessing.Queue) -> None:
    from roast_jobs.jobs import JobManager
    from tests.apps.jobs_app import app

    with JobManager(app) as manager:
        ids = [manager.send("tests.apps.jobs_app.job_record", {"label": "p"}, queue=queue,
                            singleton_key=key) for _ in range(5)]  # fmt: skip
    out.put(ids)


def test_concurrent_processes_make_exactly_one_job() -> None:
    key = uuid.uuid4().hex
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_send_from_process, args=(key, IDLE, out)) for _ in range(4)]
    for p in procs:
        p.start()
    ids = [i for _ in procs for i in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 4
    assert len(ids) == 20 and len(set(ids)) == 1
    assert holders(key) == [(IDLE, ids[0])]


def test_bulk_keeps_one_per_key(jm: JobManager) -> None:
    keys = [uuid.uuid4().hex for _ in range(3)]
    calls = [TaskCall(args=("b",), singleton_key=keys[i % 3]) for i in range(90)]
    calls.append(TaskCall(args=("b",)))  # no key: always sent
    published = jm.send_many(job_record, calls, queue=IDLE)
    assert sum(p.created for p in published) == 4
    holder_of = {}
    for key in keys:
        [(_queue, holder_of[key])] = holders(key)
    for call, p in zip(calls, published, strict=True):
        if call.singleton_key is None:
            assert p.created
        elif p.created:
            assert p.task_id == holder_of[call.singleton_key]
        else:
            assert p.holder == holder_of[call.singleton_key]


def test_a_retrying_job_keeps_its_key(jm: JobManager, worker: CeleryWorker) -> None:
    key, name = uuid.uuid4().hex, uuid.uuid4().hex
    # Fails once and waits an hour for its retry: it stays in the retry state for as long
    # as the checks take, however slow the machine (no window to hit).
    first = jm.send(
        job_flaky, {"label": name, "fails": 1}, queue=QUEUE, singleton_key=key, retry_delay=3600
    )
    assert wait_until(lambda: jm.get_job(first).state is JobState.RETRY, timeout=60), worker.log()[
        -3000:
    ]
    # The retry replaced the held row: one row, the job's, still holding the key.
    assert holders(key) == [(QUEUE, first)]
    again = jm.send(job_flaky, {"label": name, "fails": 0}, queue=QUEUE, singleton_key=key)
    assert (again, again.created) == (first, False)
    assert jm.get_job(first).state is JobState.RETRY  # the checks above ran during the wait
    jm.cancel_job(first)  # the waiting retry goes, and the key with it
    assert holders(key) == [] and runs(name) == 1


def test_a_job_that_retries_runs_to_completion_and_frees_its_key(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key, name = uuid.uuid4().hex, uuid.uuid4().hex
    # Fails twice, retried after 0.2 s each time, then succeeds: a retry that clashed with
    # its own key would be dropped, and the job would never complete.
    first = jm.send(job_flaky, {"label": name, "fails": 2}, queue=QUEUE, singleton_key=key)
    assert wait_until(lambda: jm.get_job(first).state is JobState.COMPLETED, timeout=60), (
        worker.log()[-3000:]
    )
    assert runs(name) == 3 and jm.get_job(first).retry_count == 2
    assert wait_until(lambda: holders(key) == [], timeout=30)  # acked: the key is free
    assert jm.send(job_record, {"label": name}, queue=QUEUE, singleton_key=key).created


def test_a_key_that_looks_like_a_row_number_drops_nothing_else(jm: JobManager) -> None:
    # Inside the statement, keyless rows are told apart by their position ("1", "2", ...).
    calls = [TaskCall(args=("n",)), TaskCall(args=("n",), singleton_key="1"), TaskCall(args=("n",))]
    published = jm.send_many(job_record, calls, queue=new_queue("single-num"))
    assert [p.created for p in published] == [True, True, True]
