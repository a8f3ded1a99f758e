"""JobService on a real database, no workers: routing by the flags, the pause switch,
all-or-nothing creation (killed half-way), idempotent fan-out, batch completion under a
race, cancel/retry, and reconciliation with the broker."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from roast_jobs.config import get_settings
from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records, sample_data
from roast_jobs.domain.evaluations import NotFound
from roast_jobs.service.job_service import (
    InvalidRequest,
    JobService,
    SystemPaused,
)
from roast_jobs.service.reconcile import reconcile
from tests.domain_support import rollout
from tests.workers import wait_until


@pytest.fixture(scope="module")
def seeded(app_db: str) -> dict[str, Any]:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
        agent = sample_data.create_agent(s, user)
        docs = sample_data.create_documents(s, user, 1000)
    return {"user": user, "agent": agent, "docs": docs}


def new_docs(url: str, user: str, n: int) -> list[str]:
    with transaction(url) as s:
        return sample_data.create_documents(s, user, n)


def scalar(url: str, sql: str, **params: Any) -> Any:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchone()[0]  # type: ignore[index]


def messages(url: str) -> int:
    schema = get_settings().broker_schema
    try:
        return scalar(url, f'SELECT count(*) FROM "{schema}".message')
    except psycopg.errors.UndefinedTable:
        return 0


def counts(url: str) -> dict[str, int]:
    tables = ("Job", "Evaluation", "AgentEvalBatch", "Document")
    out = {t: scalar(url, f'SELECT count(*) FROM "{t}"') for t in tables}
    out["message"] = messages(url)
    return out


def test_rollout_splits_by_percent_and_keeps_each_evaluation_on_its_side(
    service: JobService, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "batch_inline_max", 1000)
    on_celery: dict[int, set[str]] = {}
    for percent in (0, 10, 50, 100):
        rollout(service, percent)
        batch = service.create_batch_jobs(seeded["agent"], document_ids=seeded["docs"])
        assert batch.fan_out == "inline" and len(batch.jobs) == 1000
        celery = {j.evaluation_id for j in batch.jobs if j.backend == "celery"}
        assert abs(len(celery) / 10 - percent) <= 4, (percent, len(celery))
        on_celery[percent] = celery
        # Every Celery job has its message, written with its row.
        with psycopg.connect(service.url) as conn:
            sent = conn.execute(
                f'SELECT count(*) FROM "{get_settings().broker_schema}".message m '
                'JOIN "Job" j ON j."brokerJobId" = m.task_id WHERE j."agentEvalBatchId" = %s',
                (batch.id,),
            ).fetchone()[0]
        assert sent == len(celery)
    # Raising the percentage keeps the earlier ones where they were.
    assert on_celery[0] == set()
    assert on_celery[10] <= on_celery[50] <= on_celery[100]
    assert len(on_celery[100]) == 1000


def test_an_open_pause_refuses_every_create_and_writes_nothing(
    service: JobService, seeded: dict[str, Any]
) -> None:
    docs = new_docs(service.url, seeded["user"], 3)
    done = service.create_evaluation_job(docs[0], seeded["agent"])
    with service._tx() as s:
        job_records.fail(s, done.id, "boom")
    with transaction(service.url) as s:
        s.execute(
            text("""INSERT INTO "SystemPause" (id, reason) VALUES ('p1', 'LLM budget spent')""")
        )
    try:
        for percent in (0, 100):
            rollout(service, percent)
            before = counts(service.url)
            attempts = [
                lambda: service.create_evaluation_job(docs[1], seeded["agent"]),
                lambda: service.create_evaluation_jobs(docs[1], [seeded["agent"]]),
                lambda: service.create_batch_jobs(seeded["agent"], document_ids=docs),
                lambda: service.create_import_job("https://example.org/post"),
                lambda: service.retry_job(done.id),
            ]
            for attempt in attempts:
                with pytest.raises(SystemPaused, match="paused: LLM budget spent"):
                    attempt()
            assert counts(service.url) == before
    finally:
        with transaction(service.url) as s:
            s.execute(text("""UPDATE "SystemPause" SET "endedAt" = CURRENT_TIMESTAMP"""))
    assert service.create_evaluation_job(docs[1], seeded["agent"]).backend == "celery"


ADVISORY_WAITERS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"


def test_a_pause_waits_for_the_creates_already_past_their_check(
    service: JobService, seeded: dict[str, Any]
) -> None:
    """A create that passed the pause check before the pause opened commits before the
    pause's opening returns: after it, no job appears (else "paused" would not mean it)."""
    from roast_jobs.service import pauses

    def pause(job_id: str, seen: list[int]) -> None:
        pauses.open_pause(service.url, "in-flight test")
        seen.append(scalar(service.url, 'SELECT count(*) FROM "Job" WHERE id = %(id)s', id=job_id))

    for percent in (0, 100):
        rollout(service, percent)
        [doc] = new_docs(service.url, seeded["user"], 1)
        seen: list[int] = []
        with transaction(service.url) as tx:
            [job] = service.create_evaluation_jobs(doc, [seeded["agent"]], session=tx)
            opener = threading.Thread(target=pause, args=(job.id, seen))
            opener.start()
            opening = wait_until(lambda: scalar(service.url, ADVISORY_WAITERS) == 1, 30)
            assert opening and not seen, "the pause did not wait for the create"
        opener.join(30)
        pauses.end_pause(service.url)
        assert seen == [1]  # when the pause was open, the job was already committed


def test_the_job_row_and_its_message_commit_together(
    service: JobService, seeded: dict[str, Any]
) -> None:
    rollout(service, 100)
    [doc] = new_docs(service.url, seeded["user"], 1)
    schema = get_settings().broker_schema
    with transaction(service.url) as session:
        [job] = service.create_evaluation_jobs(doc, [seeded["agent"]], session=session)
        # Another connection (a worker) sees neither the row nor the message yet.
        with psycopg.connect(service.url) as other:
            assert other.execute(
                f'SELECT count(*) FROM "{schema}".message WHERE task_id = %s',
                (job.broker_job_id,),
            ).fetchone() == (0,)
            assert other.execute(
                'SELECT count(*) FROM "Job" WHERE id = %s', (job.id,)
            ).fetchone() == (0,)
    with psycopg.connect(service.url) as other:
        assert other.execute(
            f'SELECT queue FROM "{schema}".message WHERE task_id = %s', (job.broker_job_id,)
        ).fetchone() == ("evaluation",)
        assert other.execute(
            'SELECT status, backend FROM "Job" WHERE id = %s', (job.id,)
        ).fetchone() == ("PENDING", "celery")


def test_a_batch_killed_half_way_leaves_no_rows_and_no_messages(
    service: JobService, seeded: dict[str, Any]
) -> None:
    rollout(service, 50)
    docs = new_docs(service.url, seeded["user"], 100)
    schema = get_settings().broker_schema
    before = counts(service.url)
    with psycopg.connect(service.url, autocommit=True) as admin:
        # The Job rows are in; the messages hang on their way in: then the backend dies.
        admin.execute(
            "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$"
        )
        admin.execute(
            f'CREATE TRIGGER stall BEFORE INSERT ON "{schema}".message '
            "FOR EACH STATEMENT EXECUTE FUNCTION stall()"
        )
        errors: list[BaseException] = []

        def create() -> None:
            try:
                service.create_batch_jobs(seeded["agent"], document_ids=docs)
            except BaseException as exc:
                errors.append(exc)

        creator = threading.Thread(target=create)
        creator.start()
        try:
            for _ in range(200):
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep' "
                    "AND datname = current_database()"
                ).fetchone()
                if row:
                    break
                time.sleep(0.05)
            else:
                pytest.fail("the batch never reached its messages")
            assert scalar(service.url, 'SELECT count(*) FROM "Job"') == before["Job"]
            admin.execute("SELECT pg_terminate_backend(%s)", (row[0],))
            creator.join(30)
        finally:
            admin.execute(f'DROP TRIGGER stall ON "{schema}".message')
            admin.execute("DROP FUNCTION stall()")
    assert errors, "the killed transaction should have failed the create"
    assert counts(service.url) == before
    batch = service.create_batch_jobs(seeded["agent"], document_ids=docs)
    after = counts(service.url)
    assert after["Job"] == before["Job"] + 100
    assert after["message"] == before["message"] + sum(j.backend == "celery" for j in batch.jobs)


def test_batch_requests_are_checked_before_anything_is_written(
    service: JobService, seeded: dict[str, Any]
) -> None:
    docs = new_docs(service.url, seeded["user"], 2)
    before = counts(service.url)
    agent = seeded["agent"]
    with pytest.raises(InvalidRequest, match="1-100"):
        service.create_batch_jobs(agent, target_count=101)
    with pytest.raises(InvalidRequest, match="1-100"):
        service.create_batch_jobs(agent, target_count=0)
    with pytest.raises(InvalidRequest, match="either"):
        service.create_batch_jobs(agent, target_count=3, document_ids=docs)
    with pytest.raises(InvalidRequest, match="empty"):
        service.create_batch_jobs(agent, document_ids=[])
    with pytest.raises(NotFound, match="agent not found: 'nope'"):
        service.create_batch_jobs("nope", document_ids=docs)
    with pytest.raises(NotFound, match="document not found: 'missing'"):
        service.create_batch_jobs(agent, document_ids=[*docs, "missing"])
    with pytest.raises(NotFound, match="document"):
        service.create_evaluation_job("missing", agent)
    with pytest.raises(ValueError, match="invalid ImportPayload"):
        service.create_import_job("ftp://example.org/x")
    assert counts(service.url) == before


def test_target_count_samples_evaluated_documents_and_repeats_them(
    service: JobService, seeded: dict[str, Any]
) -> None:
    rollout(service, 0)
    with transaction(service.url) as s:
        agent = sample_data.create_agent(s, seeded["user"], name="Sampler")
        docs = sample_data.create_documents(s, seeded["user"], 3)
    with pytest.raises(InvalidRequest, match="no evaluated documents"):
        service.create_batch_jobs(agent, target_count=5)
    # Evaluate the three once (as the legacy worker would, in-process).
    from roast_jobs.domain import runner
    from roast_jobs.domain.offline_evaluator import OfflineEvaluator

    for doc in docs:
        job = service.create_evaluation_job(doc, agent)
        with transaction(service.url) as s:
            assert job_records.mark_running(s, job.id) is not None
        runner.run_evaluation(job.id, OfflineEvaluator(), lambda: transaction(service.url))
    batch = service.create_batch_jobs(agent, target_count=7)
    assert batch.job_count == 7 and len(batch.jobs) == 7
    assert sorted(set(batch.document_ids)) == sorted(docs)
    assert max(batch.document_ids.count(d) for d in docs) == 3


def test_fan_out_creates_each_job_once_however_often_it_runs(
    service: JobService, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "batch_inline_max", 10)
    monkeypatch.setattr(get_settings(), "batch_chunk_size", 7)
    docs = new_docs(service.url, seeded["user"], 60)
    # Celery off: fanned out here, chunk by chunk; a second run adds nothing.
    rollout(service, 0)
    batch = service.create_batch_jobs(seeded["agent"], document_ids=docs)
    assert batch.fan_out == "chunks"
    assert service.fan_out(batch.id) == 0
    assert service.batch_progress(batch.id).created == 60
    # Celery on: a batch task is sent (no worker here); fan-outs racing share the work.
    rollout(service, 100)
    for _round in range(4):
        batch = service.create_batch_jobs(seeded["agent"], document_ids=docs)
        assert batch.fan_out == "task" and batch.task_id
        made: list[int] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(3)

        def fan_out(
            batch_id: str = batch.id,
            barrier: threading.Barrier = barrier,
            made: list[int] = made,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait()
                made.append(service.fan_out(batch_id))
            except BaseException as exc:
                errors.append(exc)

        racers = [threading.Thread(target=fan_out) for _ in range(3)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert errors == []
        assert sum(made) == 60
    progress = service.batch_progress(batch.id)
    assert progress.created == progress.total == progress.celery == 60
    assert (
        scalar(
            service.url,
            f'SELECT count(DISTINCT m.task_id) FROM "{get_settings().broker_schema}".message m '
            'JOIN "Job" j ON j."brokerJobId" = m.task_id WHERE j."agentEvalBatchId" = %(b)s',
            b=batch.id,
        )
        == 60
    )


def test_the_last_of_many_jobs_ending_together_completes_the_batch_once(
    service: JobService, seeded: dict[str, Any]
) -> None:
    rollout(service, 0)
    for _round in range(5):
        docs = new_docs(service.url, seeded["user"], 12)
        batch = service.create_batch_jobs(seeded["agent"], document_ids=docs)
        claimed = []
        for job in batch.jobs:
            with transaction(service.url) as s:
                claimed.append(job_records.mark_running(s, job.id))
        assert all(c is not None and c.batch_id == batch.id for c in claimed)
        barrier = threading.Barrier(len(claimed))

        def finish(job_id: str, barrier: threading.Barrier = barrier) -> None:
            with transaction(service.url) as s:
                s.execute(text("SELECT 1"))  # connection and snapshot ready
                barrier.wait()
                job_records.fail(s, job_id, "boom")

        threads = [threading.Thread(target=finish, args=(c.id,)) for c in claimed if c]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        progress = service.batch_progress(batch.id)
        assert progress.failed == 12
        assert progress.completed_at is not None, "no finishing job saw the batch done"


def test_cancel_and_retry_on_both_backends(service: JobService, seeded: dict[str, Any]) -> None:
    docs = new_docs(service.url, seeded["user"], 2)
    schema = get_settings().broker_schema
    for percent, doc in ((0, docs[0]), (100, docs[1])):
        rollout(service, percent)
        job = service.create_evaluation_job(doc, seeded["agent"])
        status = service.cancel_job(job.id, reason="not needed")
        assert status["status"] == "CANCELLED"
        assert status["cancellationReason"] == "not needed"
        if job.broker_job_id:
            assert (
                scalar(
                    service.url,
                    f'SELECT count(*) FROM "{schema}".message WHERE task_id = %(t)s',
                    t=job.broker_job_id,
                )
                == 0
            ), "cancelling a waiting Celery job removes its message"
        with pytest.raises(job_records.InvalidJobState, match="it is CANCELLED"):
            service.cancel_job(job.id)
        again = service.retry_job(job.id)
        assert again.backend == ("celery" if percent else "legacy")
        assert service.get_job_status(again.id)["originalJobId"] == job.id
        with pytest.raises(job_records.InvalidJobState, match="retry"):
            service.retry_job(again.id)  # still PENDING
        service.cancel_job(again.id)
        retried = service.retry_job(again.id)
        assert service.get_job_status(retried.id)["originalJobId"] == job.id
        # While the evaluation has a job waiting, the cancelled one cannot be retried.
        with pytest.raises(InvalidRequest, match="already has a waiting or running job"):
            service.retry_job(job.id)
    with pytest.raises(job_records.JobNotFound):
        service.get_job_status("no-such-job")
    with pytest.raises(job_records.JobNotFound):
        service.cancel_job("no-such-job")


def test_reconciliation_fails_celery_rows_whose_message_is_gone(
    service: JobService, seeded: dict[str, Any]
) -> None:
    rollout(service, 100)
    docs = new_docs(service.url, seeded["user"], 3)
    lost, kept, running = (service.create_evaluation_job(d, seeded["agent"]) for d in docs)
    schema = get_settings().broker_schema
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{schema}".message WHERE task_id = ANY(%s)',
            ([lost.broker_job_id, running.broker_job_id],),
        )
        conn.execute(
            """UPDATE "Job" SET "updatedAt" = CURRENT_TIMESTAMP - interval '11 minutes'
                WHERE id = ANY(%s)""",
            ([lost.id, kept.id],),
        )
        conn.execute(
            """UPDATE "Job" SET status = 'RUNNING',
                      "updatedAt" = CURRENT_TIMESTAMP - interval '31 minutes' WHERE id = %s""",
            (running.id,),
        )
    done = {r.job_id: r for r in reconcile(service)}
    assert set(done) == {lost.id, running.id}
    assert service.get_job_status(lost.id)["error"] == "reconciled: PENDING with no broker message"
    assert "RUNNING for more than" in service.get_job_status(running.id)["error"]
    assert service.get_job_status(kept.id)["status"] == "PENDING"
    assert reconcile(service) == []


def test_reconciliation_spares_a_job_taken_up_while_it_asked_the_broker(
    service: JobService, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker says "nothing live", then, before the job is failed, a redriven message
    is claimed and its run touches the row: the job is left to that run."""
    import roast_jobs.service.reconcile as reconciler

    rollout(service, 100)
    [doc] = new_docs(service.url, seeded["user"], 1)
    job = service.create_evaluation_job(doc, seeded["agent"])
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            f'DELETE FROM "{get_settings().broker_schema}".message WHERE task_id = %s',
            (job.broker_job_id,),
        )
        conn.execute(
            """UPDATE "Job" SET status = 'RUNNING',
                      "updatedAt" = CURRENT_TIMESTAMP - interval '31 minutes' WHERE id = %s""",
            (job.id,),
        )
    asked = reconciler._live

    def asked_then_taken_up(svc: JobService, broker_job_id: str | None) -> bool:
        live = asked(svc, broker_job_id)
        with psycopg.connect(service.url, autocommit=True) as conn:  # the run's mark_running
            conn.execute('UPDATE "Job" SET "updatedAt" = CURRENT_TIMESTAMP WHERE id = %s',
                         (job.id,))  # fmt: skip
        return live

    monkeypatch.setattr(reconciler, "_live", asked_then_taken_up)
    assert reconcile(service) == []
    assert service.get_job_status(job.id)["status"] == "RUNNING"


def test_a_paused_fan_out_creates_nothing_and_maintenance_resumes_a_stopped_one(
    service: JobService, seeded: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from roast_jobs.service.reconcile import resume_fan_outs

    monkeypatch.setattr(get_settings(), "batch_inline_max", 10)
    rollout(service, 100)
    docs = new_docs(service.url, seeded["user"], 30)
    batch = service.create_batch_jobs(seeded["agent"], document_ids=docs)
    assert batch.fan_out == "task"  # no worker here: nothing fans it out
    with transaction(service.url) as s:
        s.execute(text("""INSERT INTO "SystemPause" (id, reason) VALUES ('p2', 'budget')"""))
    try:
        with pytest.raises(SystemPaused):
            service.fan_out(batch.id)
        assert service.batch_progress(batch.id).created == 0
    finally:
        with transaction(service.url) as s:
            s.execute(text("""UPDATE "SystemPause" SET "endedAt" = CURRENT_TIMESTAMP"""))
    assert resume_fan_outs(service) == {}, "a fresh batch is left to its task"
    with transaction(service.url) as s:
        s.execute(
            text(
                """UPDATE "AgentEvalBatch" SET "createdAt" = "createdAt" - interval '10 minutes'
                    WHERE id = :b"""
            ),
            {"b": batch.id},
        )
    assert resume_fan_outs(service) == {batch.id: 30}
    assert service.batch_progress(batch.id).created == 30
    assert resume_fan_outs(service) == {}


def test_the_services_celery_app_leaves_the_current_app_alone(app_db: str) -> None:
    """An application embedding JobService keeps its own current_app: its AsyncResult()s
    must not go to the service's app (whose database may be another, or gone)."""
    from celery import Celery, current_app

    mine = Celery("embedding-app", set_as_current=True)
    svc = JobService(app_db)
    try:
        assert svc.app is not mine
        assert current_app._get_current_object() is mine
    finally:
        svc.close()


def test_threads_asking_at_once_share_one_app_and_one_manager(app_db: str) -> None:
    """The API's threads reach a fresh service at the same moment: one Celery app and one
    job manager (with its connections and listener) come of it, not one per thread."""
    svc = JobService(app_db)
    start = threading.Barrier(8)
    seen: list[tuple[int, int]] = []

    def ask() -> None:
        start.wait()
        seen.append((id(svc.app), id(svc.manager)))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert len(seen) == 8 and len(set(seen)) == 1, seen
    finally:
        svc.close()
