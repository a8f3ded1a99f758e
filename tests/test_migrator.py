"""The migrator on a real database, no workers: what a batch writes, what it refuses,
what it leaves to others (rows or messages held elsewhere), dry runs, the CLI, and the
ownership guard that makes a stale Celery message harmless after a move."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from roast_jobs.db.models import AgentEvalBatch
from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records, runner, sample_data
from roast_jobs.domain.offline_evaluator import OfflineEvaluator
from roast_jobs.domain.runner import time_limit_for
from roast_jobs.migrator import Direction, migrate
from roast_jobs.service.job_service import _BATCH_NS, HARD_LIMIT_GRACE, JobService
from roast_jobs.service.reconcile import reconcile
from tests.conftest import BROKER_SCHEMA
from tests.domain_support import fetch, rollout
from tests.workers import run_cli

FORWARD, REVERSE = Direction.LEGACY_TO_CELERY, Direction.CELERY_TO_LEGACY
MESSAGES = f'"{BROKER_SCHEMA}".message'


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, Any]:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
        agents = [
            sample_data.create_agent(s, user, name="Plain"),
            sample_data.create_agent(s, user, name="Fallacies", capability="fallacy-check"),
        ]
    return {"user": user, "agents": agents}


@pytest.fixture(autouse=True)
def _empty(app_db: str, service: JobService) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute('DELETE FROM "JobMigrationStatus"')
        conn.execute('DELETE FROM "Job"')
        conn.execute(f"DELETE FROM {MESSAGES}")
    rollout(service, 0)


@contextmanager
def row_locked(url: str, sql: str, *params: Any) -> Iterator[None]:
    """``sql`` (a SELECT ... FOR UPDATE) holds its rows in another transaction meanwhile."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:
            conn.execute(sql, params)
            locked.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(10)
        yield
    finally:
        release.set()
        thread.join()


def legacy_jobs(service: JobService, people: dict[str, Any], documents: int) -> list[str]:
    """One legacy job per (document, agent), created through the service."""
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], documents)
    ids = []
    for doc in docs:
        ids += [j.id for j in service.create_evaluation_jobs(doc, people["agents"])]
    return ids


def snapshot(url: str) -> dict[str, Any]:
    return {
        "jobs": fetch(url, 'SELECT * FROM "Job" ORDER BY id'),
        "records": fetch(url, 'SELECT * FROM "JobMigrationStatus" ORDER BY id'),
        "messages": fetch(url, f"SELECT * FROM {MESSAGES} ORDER BY id"),
    }


def test_forward_moves_every_waiting_job_with_one_record_and_its_place_in_line(
    service: JobService, people: dict[str, Any]
) -> None:
    ids = legacy_jobs(service, people, 6)  # 12 jobs, two agents with two time limits
    running = ids[0]
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE \"Job\" SET status = 'RUNNING', attempts = 1 WHERE id = %s", (running,)
        )
        conn.execute(
            'UPDATE "Job" SET attempts = 2, "originalJobId" = %s WHERE id = %s', (running, ids[1])
        )
    rollout(service, 100)
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1)
    [newer] = service.create_evaluation_jobs(doc, people["agents"][:1])
    assert newer.backend == "celery"

    summary = migrate(FORWARD, service.url, batch_size=5, service=service)

    assert (summary.moved, summary.skipped, summary.batches) == (11, {}, 3)
    assert (summary.waiting_before, summary.waiting_after) == (11, 0)
    jobs = {
        r[0]: r[1:]
        for r in fetch(
            service.url,
            'SELECT id, backend, status, "brokerJobId", attempts, "originalJobId", "createdAt" '
            'FROM "Job"',
        )
    }
    assert jobs[running][:2] == ("legacy", "RUNNING")
    assert jobs[ids[1]][3:5] == (2, running)  # attempts and retry chain kept
    records = fetch(
        service.url,
        'SELECT "jobId", "fromBackend", "toBackend", status, "brokerJobId", "runId" '
        'FROM "JobMigrationStatus"',
    )
    moved = [i for i in ids if i != running]
    assert sorted(r[0] for r in records) == sorted(moved)
    for job_id, src, dst, status, broker, run_id in records:
        assert (src, dst, status, run_id) == ("legacy", "celery", "moved", summary.run_id)
        assert jobs[job_id][:3] == ("celery", "PENDING", broker)
        assert broker != str(uuid.uuid5(_BATCH_NS, f"{job_id}:celery"))  # a fresh task id
    # One message per moved job, in the job's own place in line: jobs created before the
    # newer Celery job are served before it, oldest first.
    messages = fetch(
        service.url,
        f"SELECT task_id, visible_at, payload::jsonb #> '{{headers,timelimit}}', "
        f"payload::jsonb #>> '{{headers,kwargsrepr}}' FROM {MESSAGES} ORDER BY visible_at, id",
    )
    # (jobs created in one transaction share a createdAt: their order among themselves is
    # any)
    assert sorted(m[0] for m in messages[:-1]) == sorted(jobs[i][2] for i in moved)
    assert messages[-1][0] == newer.broker_job_id
    task_of = {jobs[i][2]: i for i in moved}
    for task_id, visible_at, _limit, kwargs in messages[:-1]:
        job_id = task_of[task_id]
        assert visible_at.replace(tzinfo=None) == jobs[job_id][5]
        assert f"'job_id': '{job_id}'" in kwargs
    plain, fallacy = time_limit_for(None), time_limit_for("fallacy-check")
    assert {tuple(m[2]) for m in messages[:-1]} == {
        (plain + HARD_LIMIT_GRACE, plain),
        (fallacy + HARD_LIMIT_GRACE, fallacy),
    }


def test_jobs_that_cannot_run_are_failed_with_the_reason_not_sent(
    service: JobService, people: dict[str, Any]
) -> None:
    with transaction(service.url) as s:
        batch = AgentEvalBatch(
            agent_id=people["agents"][0],
            user_id=people["user"],
            target_count=1,
            requested_document_ids=[],
        )
        s.add(batch)
        s.flush()
        batch_id = batch.id
    good, no_doc_version, bad_id = legacy_jobs(service, people, 3)[::2]
    with psycopg.connect(service.url, autocommit=True) as conn:
        doc = conn.execute(
            'SELECT e."documentId" FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId" '
            "WHERE j.id = %s",
            (no_doc_version,),
        ).fetchone()[0]
        conn.execute('DELETE FROM "DocumentVersion" WHERE "documentId" = %s', (doc,))
        conn.execute(
            'UPDATE "Job" SET "agentEvalBatchId" = %s WHERE id = %s', (batch_id, no_doc_version)
        )
        conn.execute("UPDATE \"Job\" SET id = 'not an id!' WHERE id = %s", (bad_id,))
        # The other jobs of these documents share their fate: keep only the three.
        conn.execute(
            'DELETE FROM "Job" WHERE id <> ALL(%s)', ([good, no_doc_version, "not an id!"],)
        )

    summary = migrate(FORWARD, service.url, service=service)

    assert summary.moved == 1
    assert summary.skipped == {
        f"document {doc} has no version": 1,
        "invalid payload: an id is not 1-200 of [A-Za-z0-9_-]": 1,
    }
    found = dict(
        (r[0], r[1:])
        for r in fetch(service.url, 'SELECT id, status, backend, error, "brokerJobId" FROM "Job"')
    )
    assert found[good][:2] == ("PENDING", "celery")
    assert found[no_doc_version][:3] == (
        "FAILED",
        "legacy",
        f"not migrated to celery: document {doc} has no version",
    )
    assert found["not an id!"][:2] == ("FAILED", "legacy")
    records = dict(
        (r[0], r[1:])
        for r in fetch(service.url, 'SELECT "jobId", status, error FROM "JobMigrationStatus"')
    )
    assert records[no_doc_version] == ("failed", f"document {doc} has no version")
    assert records[good] == ("moved", None)
    assert fetch(service.url, f"SELECT task_id FROM {MESSAGES}") == [(found[good][3],)]
    # The failed job was its batch's last: the batch is complete.
    assert fetch(
        service.url,
        'SELECT "completedAt" IS NOT NULL FROM "AgentEvalBatch" WHERE id = %s',
        batch_id,
    ) == [(True,)]


def test_a_row_held_by_another_transaction_is_skipped_then_moved_by_the_next_run(
    service: JobService, people: dict[str, Any]
) -> None:
    ids = legacy_jobs(service, people, 2)
    held = sorted(ids)[0]
    # A legacy worker's claim in flight:
    with row_locked(service.url, 'SELECT 1 FROM "Job" WHERE id = %s FOR UPDATE', held):
        first = migrate(FORWARD, service.url, service=service)
    assert (first.moved, first.waiting_after) == (3, 1)
    assert fetch(service.url, 'SELECT backend FROM "Job" WHERE id = %s', held) == [("legacy",)]
    second = migrate(FORWARD, service.url, service=service)
    assert second.moved == 1
    counts = fetch(service.url, 'SELECT "jobId", count(*) FROM "JobMigrationStatus" GROUP BY 1')
    assert sorted(counts) == sorted((i, 1) for i in ids)


def test_reverse_deletes_waiting_and_delayed_messages_and_leaves_leased_ones(
    service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 100)
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], 2)
    jobs = [j for d in docs for j in service.create_evaluation_jobs(d, people["agents"])]
    waiting, delayed, leased, lost = jobs
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {MESSAGES} SET visible_at = now() + interval '1 hour' WHERE task_id = %s",
            (delayed.broker_job_id,),
        )
        conn.execute(  # a worker's claim: leased for 30 s
            f"UPDATE {MESSAGES} SET lease_owner = 'w1', visible_at = now() + interval '30 s', "
            "receipt = receipt + 1, delivery_count = 1 WHERE task_id = %s",
            (leased.broker_job_id,),
        )
        conn.execute(f"DELETE FROM {MESSAGES} WHERE task_id = %s", (lost.broker_job_id,))

    summary = migrate(REVERSE, service.url, service=service)

    assert summary.moved == 3
    assert summary.skipped == {"held by a Celery worker": 1}
    assert summary.left_running == 1
    found = dict(
        (r[0], r[1:]) for r in fetch(service.url, 'SELECT id, backend, "brokerJobId" FROM "Job"')
    )
    for job in (waiting, delayed, lost):
        assert found[job.id] == ("legacy", None)
    assert found[leased.id] == ("celery", leased.broker_job_id)
    assert fetch(service.url, f"SELECT task_id FROM {MESSAGES}") == [(leased.broker_job_id,)]
    records = fetch(
        service.url,
        'SELECT "jobId", "fromBackend", "toBackend", "brokerJobId" FROM "JobMigrationStatus"',
    )
    assert sorted(records) == sorted(
        (j.id, "celery", "legacy", j.broker_job_id) for j in (waiting, delayed, lost)
    )

    # Forward again: each job gets a new task id, never its old one.
    again = migrate(FORWARD, service.url, service=service)
    assert again.moved == 3
    new_ids = dict(fetch(service.url, 'SELECT id, "brokerJobId" FROM "Job"'))
    for job in (waiting, delayed, lost):
        assert new_ids[job.id] not in (None, job.broker_job_id)


def test_a_message_whose_job_moved_changes_nothing(
    service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 100)
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1)
    [job] = service.create_evaluation_jobs(doc, people["agents"][:1])
    migrate(REVERSE, service.url, service=service)
    with transaction(service.url) as s:  # the old task's run, arriving late
        assert job_records.mark_running(s, job.id, owner=job.broker_job_id) is None
        assert not job_records.mark_retrying(
            s, job.id, "boom", allow_pending=True, owner=job.broker_job_id
        )
        assert job_records.fail(s, job.id, "boom", owner=job.broker_job_id) is None
    assert fetch(
        service.url, 'SELECT status, backend, attempts FROM "Job" WHERE id = %s', job.id
    ) == [("PENDING", "legacy", 0)]
    with transaction(service.url) as s:  # without an owner (the legacy path) it runs
        assert job_records.mark_running(s, job.id) is not None


def test_dry_runs_write_nothing_and_report_what_would_move(
    service: JobService, people: dict[str, Any]
) -> None:
    legacy_jobs(service, people, 3)
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute('UPDATE "Job" SET id = \'bad id!\' WHERE id = (SELECT min(id) FROM "Job")')
    before = snapshot(service.url)
    forward = migrate(FORWARD, service.url, dry_run=True, batch_size=4, service=service)
    assert (forward.moved, forward.batches, forward.run_id) == (5, 2, None)
    assert forward.skipped == {"invalid payload: an id is not 1-200 of [A-Za-z0-9_-]": 1}
    assert snapshot(service.url) == before

    migrate(FORWARD, service.url, service=service)
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            f"UPDATE {MESSAGES} SET lease_owner = 'w1', visible_at = now() + interval '30 s' "
            f"WHERE id = (SELECT min(id) FROM {MESSAGES})"
        )
    before = snapshot(service.url)
    reverse = migrate(REVERSE, service.url, dry_run=True, service=service)
    assert (reverse.moved, reverse.skipped, reverse.left_running) == (
        4,
        {"held by a Celery worker": 1},
        1,
    )
    assert snapshot(service.url) == before


def test_cli_summary_json_progress_and_bad_input(
    service: JobService, people: dict[str, Any]
) -> None:
    legacy_jobs(service, people, 3)
    done = run_cli(service.url, "migrate", "legacy-to-celery", "--batch-size", "2", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["direction"], out["moved"], out["batches"], out["dry_run"]) == (
        "legacy-to-celery",
        6,
        3,
        False,
    )
    assert out["rate"] > 0 and out["run_id"]
    assert "legacy-to-celery: " in done.stderr  # plain progress lines off a terminal

    done = run_cli(service.url, "migrate", "celery-to-legacy", "--limit", "4")
    assert done.returncode == 0, done.stderr
    assert "moved: 4 jobs to the legacy table" in done.stdout
    assert "still on Celery: 2 (" in done.stdout

    before = snapshot(service.url)
    for bad in (["--batch-size", "0"], ["--limit", "-1"], ["--batch-size", "x"]):
        done = run_cli(service.url, "migrate", "celery-to-legacy", *bad)
        assert done.returncode == 2 and "Invalid value" in done.stderr, done.stderr
    done = run_cli(service.url + "_missing", "migrate", "celery-to-legacy")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert snapshot(service.url) == before


def test_a_run_whose_job_moved_on_while_it_evaluated_does_not_finish_it(
    service: JobService, people: dict[str, Any]
) -> None:
    """A lapsed lease let another delivery retry the job and the migrator move it to
    legacy while this run was evaluating: the run must not complete a job it lost."""
    rollout(service, 100)
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1)
    [job] = service.create_evaluation_jobs(doc, people["agents"][:1])

    class MovedMeanwhile:
        def evaluate(self, document: Any, agent: Any) -> Any:
            with psycopg.connect(service.url, autocommit=True) as conn:
                # ... and a legacy worker has claimed it since.
                conn.execute(
                    "UPDATE \"Job\" SET status = 'RUNNING', backend = 'legacy', "
                    '"brokerJobId" = NULL WHERE id = %s',
                    (job.id,),
                )
            return OfflineEvaluator().evaluate(document, agent)

    result = runner.run_evaluation(
        job.id,
        MovedMeanwhile(),
        lambda: transaction(service.url),
        mark_running=True,
        owner=job.broker_job_id,
    )
    assert result.evaluation_version_id is None
    assert fetch(service.url, 'SELECT status, backend FROM "Job" WHERE id = %s', job.id) == [
        ("RUNNING", "legacy")
    ]
    assert fetch(
        service.url,
        'SELECT count(*) FROM "EvaluationVersion" WHERE "evaluationId" = %s',
        job.evaluation_id,
    ) == [(0,)]


def test_reconcile_still_fails_a_stale_celery_row_without_a_task_id(
    service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 100)
    with transaction(service.url) as s:
        [doc] = sample_data.create_documents(s, people["user"], 1)
    [job] = service.create_evaluation_jobs(doc, people["agents"][:1])
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {MESSAGES}")
        conn.execute(
            'UPDATE "Job" SET "brokerJobId" = NULL, '
            '"updatedAt" = "updatedAt" - interval \'1 day\' WHERE id = %s',
            (job.id,),
        )
    assert [r.job_id for r in reconcile(service)] == [job.id]
    assert fetch(service.url, 'SELECT status FROM "Job" WHERE id = %s', job.id) == [("FAILED",)]


def test_reverse_tells_a_busy_message_from_a_held_one_and_limit_counts_what_it_saw(
    service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 100)
    with transaction(service.url) as s:
        docs = sample_data.create_documents(s, people["user"], 2)
    jobs = [j for d in docs for j in service.create_evaluation_jobs(d, people["agents"])]
    first = fetch(service.url, 'SELECT id FROM "Job" ORDER BY "createdAt", id LIMIT 1')[0][0]
    [busy] = [j for j in jobs if j.id == first]
    # An ack in flight:
    lock = f"SELECT 1 FROM {MESSAGES} WHERE task_id = %s FOR UPDATE"
    with row_locked(service.url, lock, busy.broker_job_id):
        limited = migrate(REVERSE, service.url, limit=2, batch_size=1, service=service)
    assert limited.skipped == {"message busy (claim or ack in flight)": 1}
    assert limited.moved == 1  # two looked at: the busy one and one more
    rest = migrate(REVERSE, service.url, service=service)
    assert (rest.moved, rest.skipped, rest.left_running) == (3, {}, 0)


def test_parallel_batches_move_each_job_once_and_respect_the_limit(
    service: JobService, people: dict[str, Any]
) -> None:
    ids = legacy_jobs(service, people, 10)  # 20 jobs
    first = migrate(FORWARD, service.url, batch_size=2, limit=7, parallel=3, service=service)
    assert (first.moved, first.waiting_after) == (7, 13)
    rest = migrate(FORWARD, service.url, batch_size=2, parallel=3, service=service)
    assert (rest.moved, rest.waiting_after) == (13, 0)
    counts = fetch(service.url, 'SELECT "jobId", count(*) FROM "JobMigrationStatus" GROUP BY 1')
    assert sorted(counts) == sorted((i, 1) for i in ids)
    assert fetch(service.url, f"SELECT count(DISTINCT task_id), count(*) FROM {MESSAGES}") == [
        (20, 20)
    ]
    with pytest.raises(ValueError, match="legacy-to-celery only"):
        migrate(REVERSE, service.url, parallel=2, service=service)
