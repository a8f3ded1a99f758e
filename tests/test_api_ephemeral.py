"""RoastMyPost's ephemeral batches over HTTP: ``POST /api/batches`` with an agent and
documents made inside the request (one transaction: a refusal writes nothing), their jobs
run on either backend, and the clean-up of expired ephemeral batches (maintenance and the
legacy worker), which takes what was made for them and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.domain import batches, sample_data
from roast_jobs.domain.ephemeral import EphemeralAgent, InlineDocument
from roast_jobs.domain.offline_evaluator import OfflineEvaluator
from roast_jobs.domain.runner import run_evaluation
from roast_jobs.service.job_service import JobService
from tests.api_support import auth
from tests.conftest import BROKER_SCHEMA
from tests.domain_support import fetch, rollout
from tests.workers import REPO, both_backends, wait_until

TABLES = [
    "AgentEvalBatch", "Agent", "AgentVersion", "Document", "DocumentVersion", "Evaluation",
    "EvaluationVersion", "EvaluationComment", "EvaluationHighlight", "Job", "Task",
]  # fmt: skip


def counts(url: str) -> dict[str, int]:
    out = {t: fetch(url, f'SELECT count(*) FROM "{t}"')[0][0] for t in TABLES}
    out["messages"] = fetch(url, f'SELECT count(*) FROM "{BROKER_SCHEMA}".message')[0][0]
    return out


def inline(n: int, seed: int = 0) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        title, content = sample_data.sample_text(seed + i)
        docs.append({"title": title, "content": content, "authors": ["Ada"],
                     "url": f"https://example.org/{seed + i}"})  # fmt: skip
    return docs


def body(docs: int = 2, **more: Any) -> dict[str, Any]:
    agent = {"name": "Throwaway critic", "primaryInstructions": "Be brief.",
             "selfCritiqueInstructions": "Check yourself.", "providesGrades": True}  # fmt: skip
    return {"ephemeralAgent": agent, "ephemeralDocuments": {"inline": inline(docs)}, **more}


def post(api: str, who: dict[str, Any], payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{api}/api/batches", json=payload, headers=auth(who), timeout=30)


def batch_rows(url: str, batch_id: str) -> dict[str, Any]:
    """What was made for ``batch_id``: its agent and documents (with their owners and
    ``ephemeralBatchId``), evaluations and jobs."""
    return {
        "agents": fetch(url, 'SELECT id, "submittedById" FROM "Agent" '
                        'WHERE "ephemeralBatchId" = %s', batch_id),
        "documents": fetch(url, 'SELECT id, "submittedById", "isPrivate" FROM "Document" '
                           'WHERE "ephemeralBatchId" = %s ORDER BY "createdAt", id', batch_id),
        "jobs": fetch(url, 'SELECT j.id, j.backend, e."agentId", e."documentId" FROM "Job" j '
                      'JOIN "Evaluation" e ON e.id = j."evaluationId" '
                      'WHERE j."agentEvalBatchId" = %s', batch_id),
    }  # fmt: skip


def expire(url: str, batch_id: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """UPDATE "AgentEvalBatch" SET "expiresAt" = CURRENT_TIMESTAMP - interval '1 minute'
                WHERE id = %s""",
            (batch_id,),
        )


def set_status(url: str, batch_id: str, status: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('UPDATE "Job" SET status = %s WHERE "agentEvalBatchId" = %s',
                     (status, batch_id))  # fmt: skip


def ephemeral_batch(service: JobService, user: str, docs: int = 2, seed: int = 0) -> str:
    """An ephemeral batch (its agent and documents made with it), jobs on legacy."""
    rollout(service, 0)
    made = service.create_batch_jobs(
        ephemeral_agent=EphemeralAgent(name="critic", primary_instructions="Be brief."),
        inline_documents=[InlineDocument(title=t, content=c) for t, c in
                          (sample_data.sample_text(seed + i) for i in range(docs))],
        user_id=user,
    )  # fmt: skip
    return made.id


def run_jobs(url: str, batch_id: str) -> None:
    """Run the batch's jobs here: versions with comments and highlights, as a worker's."""
    for (job_id,) in fetch(url, 'SELECT id FROM "Job" WHERE "agentEvalBatchId" = %s', batch_id):
        run_evaluation(job_id, OfflineEvaluator(), lambda: transaction(url), mark_running=True)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO "Task" (id, name, "modelName", "priceInDollars", "jobId")
                   VALUES (gen_random_uuid()::text, 'analysis', 'offline', 0, %s)""",
                (job_id,),
            )


def still_there(url: str, batch_id: str) -> bool:
    return bool(fetch(url, 'SELECT 1 FROM "AgentEvalBatch" WHERE id = %s', batch_id))


def orphans(url: str) -> dict[str, int]:
    """Rows a delete could leave behind: highlights no comment uses, jobs of no
    evaluation (impossible by key, counted to be sure), batches of no agent."""
    return {
        "highlights": fetch(url, 'SELECT count(*) FROM "EvaluationHighlight" h WHERE NOT '
                            'EXISTS (SELECT 1 FROM "EvaluationComment" c '
                            'WHERE c."highlightId" = h.id)')[0][0],
        "versions": fetch(url, 'SELECT count(*) FROM "EvaluationVersion" v WHERE NOT EXISTS '
                          '(SELECT 1 FROM "Evaluation" e WHERE e.id = v."evaluationId")')[0][0],
    }  # fmt: skip


@pytest.fixture(scope="module")
def env(app_db: str) -> dict[str, str]:
    return {"DATABASE_URL": app_db, "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def test_an_ephemeral_batch_runs_on_either_backend_and_expires(
    api: str, app_db: str, service: JobService, people: dict[str, Any], env: dict[str, str]
) -> None:
    alice, bob = people["alice"], people["bob"]
    rollout(service, 100)
    on_celery = post(api, alice, body(2, name="celery", trackingId="eph-1"))
    assert on_celery.status_code == 201, on_celery.text
    rollout(service, 0)
    on_legacy = post(api, alice, body(3, isEphemeral=True, expiresInDays=2))
    assert on_legacy.status_code == 201, on_legacy.text

    for made, backend, days in ((on_celery, "celery", 7), (on_legacy, "legacy", 2)):
        answer = made.json()
        batch, agent = answer["batch"], answer["agent"]
        assert batch["isEphemeral"] and agent["isEphemeral"] and batch["fanOut"] == "inline"
        expires = datetime.fromisoformat(batch["expiresAt"]).replace(tzinfo=UTC)
        assert abs(expires - datetime.now(UTC) - timedelta(days=days)) < timedelta(minutes=5)
        rows = batch_rows(app_db, batch["id"])
        # The agent and documents were made for this batch, and are the caller's.
        assert rows["agents"] == [(agent["id"], alice["id"])]
        assert len(rows["documents"]) == batch["jobCount"]
        assert {row[1:] for row in rows["documents"]} == {(alice["id"], True)}  # private
        assert sorted((j, b, a, d) for j, b, a, d in rows["jobs"]) == sorted(
            (j["id"], backend, agent["id"], j["documentId"]) for j in answer["jobs"]
        )
        assert {d for *_, d in rows["jobs"]} == {d for d, *_ in rows["documents"]}
        assert httpx.get(f"{api}/api/batches/{batch['id']}", headers=auth(bob)).status_code == 404
    version = fetch(app_db, 'SELECT name, "primaryInstructions", "selfCritiqueInstructions", '
                    '"providesGrades" FROM "AgentVersion" WHERE "agentId" = %s',
                    on_celery.json()["agent"]["id"])  # fmt: skip
    assert version == [("Throwaway critic", "Be brief.", "Check yourself.", True)]

    # Expired ones (made before the workers run theirs): one for the legacy worker's first
    # sweep, one for the maintenance task (the legacy worker's next is minutes away).
    first, second = (ephemeral_batch(service, alice["id"], seed=s) for s in (50, 60))
    set_status(app_db, first, "CANCELLED")
    set_status(app_db, second, "COMPLETED")
    expire(app_db, first)
    with both_backends(env, "ephemeral", 1, 2, queues="evaluation,maintenance"):
        for made in (on_celery, on_legacy):
            url = f"{api}/api/batches/{made.json()['batch']['id']}"

            def complete(url: str = url) -> bool:
                return bool(httpx.get(url, headers=auth(alice)).json()["isComplete"])

            assert wait_until(complete, 90), httpx.get(url, headers=auth(alice)).text
        assert wait_until(lambda: not still_there(app_db, first), 30), "the legacy worker's"
        assert still_there(app_db, second)
        expire(app_db, second)
        sent = service.app.send_task("roast_jobs.maintenance", queue="maintenance")
        done = wait_until(
            lambda: (j := service.manager.get_job(sent.id)).state.value == "completed" and j, 60
        )
        assert done, service.manager.get_job(sent.id)
        assert second in done.result["ephemeral_batches_deleted"]
    assert not still_there(app_db, second)
    assert still_there(app_db, on_celery.json()["batch"]["id"]), "not expired yet"


def test_refusals_write_nothing(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    alice, bob = people["alice"], people["bob"]
    rollout(service, 50)
    before = counts(app_db)
    huge = {"title": "Too long", "content": "word " * 100_001}
    tiny = {"title": "Too short", "content": "Short."}
    refusals = [
        ({**body(), "agentId": people["agent"]}, 400, "exactly one of agentId and ephemeralAgent"),
        ({"ephemeralDocuments": {"inline": inline(1)}}, 400, "exactly one of agentId"),
        ({"ephemeralAgent": {"name": "x"}}, 400, "exactly one of targetCount"),
        ({**body(), "documentIds": [people["alices_doc"]]}, 400, "exactly one of targetCount"),
        ({**body(), "ephemeralDocuments": {}}, 400, "needs inline documents"),
        ({**body(), "ephemeralDocuments": {"urls": ["https://example.org/a"]}}, 400,
         "POST /api/import"),
        ({**body(), "ephemeralDocuments": {"inline": [*inline(1), huge]}}, 400,
         "100,001 words, more than 100,000"),
        ({**body(), "ephemeralDocuments": {"inline": [tiny]}}, 400, "fewer than 30"),
        ({**body(), "ephemeralDocuments": {"inline": [{"title": f"t{i}", "content": "x" * 10**6}
                                                      for i in range(11)]}}, 400,
         "11,000,000 characters, more than 10,000,000 in one batch"),
        # The agent is made before the refusal: the transaction takes it back.
        ({**body(), "ephemeralDocuments": None, "targetCount": 2}, 400, "no evaluated documents"),
        # Someone else's agent or documents: 404, as unknown ones.
        ({"agentId": people["agent"], "ephemeralDocuments": {"inline": inline(1)}}, 404, "agent"),
        ({**body(), "ephemeralDocuments": None, "documentIds": [people["alices_doc"]]}, 404,
         "document"),
    ]  # fmt: skip
    for payload, status, message in refusals:
        payload = {k: v for k, v in payload.items() if v is not None}
        who = bob if status == 404 else alice
        refused = post(api, who, payload)
        assert refused.status_code == status, (payload.keys(), refused.text)
        assert message in refused.json()["error"], refused.text
    schema_errors = [
        {**body(), "ephemeralDocuments": {"inline": []}},
        {**body(), "ephemeralDocuments": {"inline": inline(101)}},
        {**body(), "ephemeralAgent": {"name": "x", "providesGrades": "yes"}},
        {**body(), "ephemeralAgent": {"name": "x", "surprise": 1}},
        {**body(), "ephemeralAgent": {"name": ""}},
        {**body(), "ephemeralDocuments": {"inline": [{"title": "t", "content": "c" * 40,
                                                      "url": "ftp://example.org"}]}},
        {**body(), "ephemeralDocuments": {"inline": [{"title": "t"}]}},
        {**body(), "isEphemeral": 1},
        {**body(), "expiresInDays": 0},
        # One "word" of a million and one characters.
        {**body(), "ephemeralDocuments": {"inline": [{"title": "t", "content": "x" * 1_000_001}]}},
    ]  # fmt: skip
    for payload in schema_errors:
        refused = post(api, alice, payload)
        assert refused.status_code == 422, (str(payload)[:300], refused.text[:300])
    admin = auth(people["admin"])
    opened = httpx.post(f"{api}/api/admin/pause", json={"reason": "ephemeral test"}, headers=admin)
    assert opened.status_code == 201, opened.text
    try:
        assert post(api, alice, body()).status_code == 503
    finally:
        assert httpx.delete(f"{api}/api/admin/pause", headers=admin).is_success
    assert counts(app_db) == before


def test_cleanup_takes_expired_ephemeral_batches_and_nothing_else(
    app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    alice = people["alice"]["id"]
    with transaction(app_db) as s:
        docs = sample_data.create_documents(s, alice, 2, seed=7)
    gone = ephemeral_batch(service, alice, seed=10)
    run_jobs(app_db, gone)
    fresh = ephemeral_batch(service, alice, seed=20)  # not expired yet
    run_jobs(app_db, fresh)
    pending = ephemeral_batch(service, alice, seed=30)  # a job still waits
    running = ephemeral_batch(service, alice, seed=40)
    set_status(app_db, running, "RUNNING")
    # The caller's own agent and documents, kept: a non-ephemeral batch (never deleted), and
    # an ephemeral one, deleted without them.
    regular = service.create_batch_jobs(people["agent"], document_ids=docs, expires_in_days=1)
    flagged = service.create_batch_jobs(people["agent"], document_ids=docs, is_ephemeral=True)
    run_jobs(app_db, regular.id)
    run_jobs(app_db, flagged.id)
    # An ephemeral agent another batch uses (its jobs not made yet): deleting the agent
    # would take that batch too.
    shared = ephemeral_batch(service, alice, seed=70)
    set_status(app_db, shared, "COMPLETED")
    [shared_agent] = batch_rows(app_db, shared)["agents"]
    user = service.create_batch_jobs(shared_agent[0], document_ids=docs)
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute('DELETE FROM "Job" WHERE "agentEvalBatchId" = %s', (user.id,))
    for batch_id in (gone, pending, running, regular.id, flagged.id, shared):
        expire(app_db, batch_id)
    gone_rows = batch_rows(app_db, gone)
    kept = {b: batch_rows(app_db, b) for b in (fresh, pending, running, regular.id, shared)}
    evaluations = fetch(app_db, 'SELECT count(*) FROM "Evaluation"')[0][0]

    with transaction(app_db) as s:
        deleted = batches.delete_expired_ephemeral(s)

    assert sorted(deleted) == sorted([gone, flagged.id])
    assert not still_there(app_db, gone) and not still_there(app_db, flagged.id)
    for table, column, ids in (
        ("Agent", "id", [a for a, _ in gone_rows["agents"]]),
        ("Document", "id", [d for d, *_ in gone_rows["documents"]]),
        ("Job", "id", [j for j, *_ in gone_rows["jobs"]]),
        ("AgentVersion", '"agentId"', [a for a, _ in gone_rows["agents"]]),
        ("DocumentVersion", '"documentId"', [d for d, *_ in gone_rows["documents"]]),
        ("Evaluation", '"documentId"', [d for d, *_ in gone_rows["documents"]]),
    ):
        left = fetch(app_db, f'SELECT count(*) FROM "{table}" WHERE {column} = ANY(%s)', ids)
        assert left == [(0,)], table
    assert orphans(app_db) == {"highlights": 0, "versions": 0}
    # The flagged batch's jobs were on the caller's own evaluations: they stay, batchless.
    flagged_jobs = [j.id for j in flagged.jobs]
    assert fetch(app_db, 'SELECT count(*), count("agentEvalBatchId") FROM "Job" '
                 "WHERE id = ANY(%s)", flagged_jobs) == [(2, 0)]  # fmt: skip
    assert fetch(app_db, 'SELECT count(*) FROM "Evaluation"')[0][0] == evaluations - 2
    for batch_id, rows in kept.items():
        assert still_there(app_db, batch_id) and batch_rows(app_db, batch_id) == rows, batch_id
    assert still_there(app_db, user.id)


def test_two_passes_at_once_take_different_batches(
    app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    made = [ephemeral_batch(service, people["alice"]["id"], docs=1, seed=80 + i) for i in range(3)]
    for batch_id in made:
        set_status(app_db, batch_id, "COMPLETED")
        expire(app_db, batch_id)
    with transaction(app_db) as first:
        taken = batches.delete_expired_ephemeral(first, limit=2)
        with transaction(app_db) as second:
            # Locks held by the first pass are skipped, never waited for.
            second.execute(text("SET LOCAL lock_timeout = '2s'"))
            rest = batches.delete_expired_ephemeral(second)
    assert len(taken) == 2 and not set(taken) & set(rest)
    assert set(made) <= set(taken) | set(rest)
    assert not any(still_there(app_db, b) for b in made)


def test_the_clean_up_never_waits_for_a_retry_of_its_job(
    app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    """A retry locks the failed job, then inserts its new job, which references the batch;
    a clean-up that waited for the job's lock while holding the batch's would deadlock
    with it. The clean-up leaves such a batch for a later pass instead."""
    batch_id = ephemeral_batch(service, people["alice"]["id"], docs=1, seed=90)
    set_status(app_db, batch_id, "FAILED")
    expire(app_db, batch_id)
    [(job_id,)] = fetch(app_db, 'SELECT id FROM "Job" WHERE "agentEvalBatchId" = %s', batch_id)
    with psycopg.connect(app_db) as retry:  # as JobService.retry_job: the job's row first
        retry.execute('SELECT 1 FROM "Job" WHERE id = %s FOR UPDATE', (job_id,))
        with transaction(app_db) as sweep:
            sweep.execute(text("SET LOCAL lock_timeout = '3s'"))  # waiting fails the test
            assert batch_id not in batches.delete_expired_ephemeral(sweep)
        retry.execute(
            """INSERT INTO "Job" (id, status, "evaluationId", "agentEvalBatchId", backend,
                                  "originalJobId")
               SELECT gen_random_uuid()::text, 'PENDING', "evaluationId", "agentEvalBatchId",
                      backend, id FROM "Job" WHERE id = %s""",
            (job_id,),
        )
    assert still_there(app_db, batch_id)
    with transaction(app_db) as sweep:  # its retry waits now: kept
        assert batch_id not in batches.delete_expired_ephemeral(sweep)
    set_status(app_db, batch_id, "COMPLETED")
    with transaction(app_db) as sweep:
        assert batch_id in batches.delete_expired_ephemeral(sweep)
    assert not still_there(app_db, batch_id)
