"""The legacy user routes over HTTP (a real uvicorn): batches, evaluations, re-runs and
imports, their owner-only rules, refusals that write nothing, and the re-run race."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.demo_pages import ArticleServer
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.api_support import auth
from tests.domain_support import fetch, lock_waiters, rollout
from tests.workers import wait_until

COUNTS = {
    "batches": 'SELECT count(*) FROM "AgentEvalBatch"',
    "jobs": 'SELECT count(*) FROM "Job"',
    "evaluations": 'SELECT count(*) FROM "Evaluation"',
    "documents": 'SELECT count(*) FROM "Document"',
}


def counts(url: str) -> dict[str, int]:
    return {k: fetch(url, sql)[0][0] for k, sql in COUNTS.items()}


def new_docs(url: str, user: str, n: int) -> list[str]:
    with transaction(url) as s:
        return sample_data.create_documents(s, user, n)


@pytest.fixture
def article() -> Any:
    server = ArticleServer()
    yield server.start()
    server.stop()


def test_a_batch_is_made_listed_and_shown_to_its_owner_only(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 50)
    alice, bob = people["alice"], people["bob"]
    docs = new_docs(app_db, alice["id"], 6)
    body = {"agentId": people["agent"], "documentIds": docs, "name": "six", "trackingId": "t-1"}
    made = httpx.post(f"{api}/api/batches", json=body, headers=auth(alice))
    assert made.status_code == 201, made.text
    batch = made.json()["batch"]
    assert (batch["jobCount"], batch["trackingUrl"]) == (6, f"/api/batches/{batch['id']}")
    stored = fetch(
        app_db,
        'SELECT e."documentId", j.backend FROM "Job" j JOIN "Evaluation" e '
        'ON e.id = j."evaluationId" WHERE j."agentEvalBatchId" = %s',
        batch["id"],
    )
    assert sorted(d for d, _ in stored) == sorted(docs)
    assert sorted((j["documentId"], j["backend"]) for j in made.json()["jobs"]) == sorted(stored)

    again = httpx.post(f"{api}/api/batches", json=body, headers=auth(alice))
    assert again.status_code == 409 and "t-1" in again.json()["error"]

    listed = httpx.get(f"{api}/api/batches", headers=auth(alice)).json()
    [mine] = [b for b in listed["batches"] if b["id"] == batch["id"]]
    assert mine["jobStats"] == {"total": 6, "completed": 0, "failed": 0, "running": 0,
                                "pending": 6, "cancelled": 0}  # fmt: skip
    experiments = httpx.get(f"{api}/api/batches?type=experiment", headers=auth(alice)).json()
    regular = httpx.get(f"{api}/api/batches?type=regular", headers=auth(alice)).json()
    assert batch["id"] in [b["id"] for b in experiments["batches"]]
    assert batch["id"] not in [b["id"] for b in regular["batches"]]
    assert httpx.get(f"{api}/api/batches", headers=auth(bob)).json()["total"] == 0

    shown = httpx.get(f"{api}/api/batches/{batch['id']}", headers=auth(alice))
    assert shown.status_code == 200, shown.text
    detail = shown.json()
    assert detail["jobStats"]["pending"] == 6 and len(detail["jobs"]) == 6
    assert detail["byBackend"]["legacy"] + detail["byBackend"]["celery"] == 6
    assert (detail["progress"], detail["isComplete"]) == (0.0, False)
    theirs = httpx.get(f"{api}/api/batches/{batch['id']}", headers=auth(bob))
    unknown = httpx.get(f"{api}/api/batches/nope", headers=auth(bob))
    assert theirs.status_code == unknown.status_code == 404
    assert httpx.get(f"{api}/api/batches/{batch['id']}", headers=auth(people["admin"])).is_success


def test_batch_refusals_write_nothing(api: str, app_db: str, people: dict[str, Any]) -> None:
    alice, bob = people["alice"], people["bob"]
    agent = people["agent"]
    before = counts(app_db)
    for neither_or_both in (
        {"agentId": agent},
        {"agentId": agent, "targetCount": 3, "documentIds": [people["alices_doc"]]},
    ):
        refused = httpx.post(f"{api}/api/batches", json=neither_or_both, headers=auth(alice))
        assert refused.status_code == 400, refused.text
        assert "exactly one of targetCount and documentIds" in refused.json()["error"]
    bad_bodies = [
        {"agentId": agent, "targetCount": "3"},
        {"agentId": agent, "targetCount": True},
        {"agentId": agent, "targetCount": 2.5},
        {"agentId": agent, "targetCount": 0},
        {"agentId": agent, "targetCount": 101},
        {"agentId": agent, "documentIds": []},
        {"agentId": agent, "documentIds": ["bad id!"]},
        {"agentId": agent, "targetCount": 1, "name": "nul\x00byte"},
        {"agentId": agent, "targetCount": 1, "surprise": True},
        {"agentId": agent, "targetCount": 1, "expiresInDays": 91},
    ]
    for bad in bad_bodies:
        refused = httpx.post(f"{api}/api/batches", json=bad, headers=auth(alice))
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["error"], bad
    # Someone else's agent or document: 404, as an unknown one.
    for who, body in (
        (bob, {"agentId": agent, "documentIds": [people["bobs_doc"]]}),
        (alice, {"agentId": agent, "documentIds": [people["bobs_doc"]]}),
        (alice, {"agentId": "no-such-agent", "targetCount": 2}),
    ):
        refused = httpx.post(f"{api}/api/batches", json=body, headers=auth(who))
        assert refused.status_code == 404, refused.text
    # targetCount samples documents the agent evaluated before: none yet.
    none_yet = httpx.post(f"{api}/api/batches", json={"agentId": agent, "targetCount": 2},
                          headers=auth(alice))  # fmt: skip
    assert none_yet.status_code == 400 and "no evaluated documents" in none_yet.json()["error"]
    for bad_query in ("limit=0", "limit=101", "offset=-1", "type=other", "includeExpired=maybe",
                      "limt=5"):  # fmt: skip
        assert httpx.get(f"{api}/api/batches?{bad_query}", headers=auth(alice)).status_code == 422
    assert (
        httpx.post(f"{api}/api/batches", content=b"{not json", headers=auth(alice)).status_code
        == 422
    )
    assert counts(app_db) == before


def test_documents_are_evaluated_by_their_owner_only(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 0)
    alice, bob = people["alice"], people["bob"]
    [doc] = new_docs(app_db, alice["id"], 1)
    with transaction(app_db) as s:
        other_agent = sample_data.create_agent(s, bob["id"], name="Second opinion")
    url = f"{api}/api/documents/{doc}/evaluations"
    one = httpx.post(url, json={"agentId": people["agent"]}, headers=auth(alice))
    assert one.status_code == 201, one.text
    first = one.json()
    assert (first["status"], first["created"], first["backend"]) == ("pending", True, "legacy")
    both = httpx.post(url, json={"agentIds": [people["agent"], other_agent]}, headers=auth(alice))
    assert both.status_code == 201, both.text
    assert both.json()["total"] == 2
    assert [e["created"] for e in both.json()["evaluations"]] == [False, True]
    jobs = fetch(app_db, 'SELECT j.id FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId" '
                         'WHERE e."documentId" = %s', doc)  # fmt: skip
    assert len(jobs) == 3

    before = counts(app_db)
    assert httpx.post(url, json={"agentId": people["agent"]}, headers=auth(bob)).status_code == 404
    for bad, code in (
        ({}, 400),
        ({"agentId": "a", "agentIds": ["b"]}, 400),
        ({"agentIds": []}, 422),
    ):
        assert httpx.post(url, json=bad, headers=auth(alice)).status_code == code
    unknown = httpx.post(url, json={"agentIds": [people["agent"], "ghost"]}, headers=auth(alice))
    assert unknown.status_code == 404 and "ghost" in unknown.json()["error"]
    assert counts(app_db) == before  # the known agent's job was not made either


def test_run_and_rerun_refuse_while_a_job_waits(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 100)
    alice = people["alice"]
    [doc] = new_docs(app_db, alice["id"], 1)
    url = f"{api}/api/docs/{doc}/evals/{people['agent']}"
    never = httpx.post(f"{url}/rerun", headers=auth(alice))
    assert never.status_code == 404, never.text
    assert httpx.get(url, headers=auth(alice)).status_code == 404

    ran = httpx.post(url, headers=auth(alice))
    assert ran.status_code == 200, ran.text
    job = ran.json()["job"]
    assert (job["status"], job["backend"], ran.json()["evaluation"]["created"]) == (
        "PENDING", "celery", True)  # fmt: skip
    busy = httpx.post(url, headers=auth(alice))
    assert busy.status_code == 400 and job["id"] in busy.json()["error"]
    assert httpx.post(f"{url}/rerun", headers=auth(alice)).status_code == 400
    shown = httpx.get(url, headers=auth(alice)).json()["evaluation"]
    assert shown["currentVersion"] is None
    assert shown["latestJob"] == {"id": job["id"], "status": "PENDING", "backend": "celery"}
    assert httpx.get(url, headers=auth(people["bob"])).status_code == 404

    service.cancel_job(job["id"], reason="test")
    out_of_range = httpx.post(f"{url}/rerun", json={"fromVersion": 3}, headers=auth(alice))
    assert out_of_range.status_code == 400 and "fromVersion" in out_of_range.json()["error"]
    rerun = httpx.post(f"{url}/rerun", json={}, headers=auth(alice))
    assert rerun.status_code == 200, rerun.text
    assert rerun.json()["context"] == {"fromVersion": None, "previousVersion": None}
    assert rerun.json()["evaluation"]["created"] is False
    assert fetch(app_db, 'SELECT status FROM "Job" WHERE id = %s', rerun.json()["job"]["id"]) == [
        ("PENDING",)]  # fmt: skip


def test_simultaneous_runs_of_one_evaluation_make_one_job(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    """Eight requests at once for the same document and agent: one job, seven 400s."""
    rollout(service, 50)
    alice = people["alice"]
    for round_ in range(3):
        [doc] = new_docs(app_db, alice["id"], 1)
        url = f"{api}/api/docs/{doc}/evals/{people['agent']}"
        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(lambda u: httpx.post(u, headers=auth(alice), timeout=60)
                                    .status_code, [url] * 8))  # fmt: skip
        jobs = fetch(app_db, 'SELECT count(*) FROM "Job" j JOIN "Evaluation" e ON '
                             'e.id = j."evaluationId" WHERE e."documentId" = %s', doc)  # fmt: skip
        assert (codes, jobs) == ([200] + [400] * 7, [(1,)]), round_


def test_an_import_is_a_job_on_celery_and_inline_on_legacy(
    api: str, app_db: str, service: JobService, people: dict[str, Any], article: str
) -> None:
    alice, bob = people["alice"], people["bob"]
    rollout(service, 100)
    queued = httpx.post(f"{api}/api/import", json={"url": article, "agentIds": [people["agent"]]},
                        headers=auth(alice))  # fmt: skip
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert (body["backend"], body["created"]) == ("celery", True)
    status = httpx.get(f"{api}{body['statusUrl']}", headers=auth(alice))
    assert status.status_code == 200, status.text
    assert (status.json()["state"], status.json()["url"]) == ("created", article)
    assert httpx.get(f"{api}{body['statusUrl']}", headers=auth(bob)).status_code == 404
    twice = httpx.post(f"{api}/api/import", json={"url": article}, headers=auth(alice))
    assert twice.status_code == 202 and twice.json() == {**body, "created": False}
    # Another user's import of the same page is their own job: alice's id is not shown.
    bobs = httpx.post(f"{api}/api/import", json={"url": article}, headers=auth(bob))
    assert bobs.status_code == 202 and bobs.json()["created"] is True
    assert bobs.json()["jobId"] != body["jobId"]

    rollout(service, 0)
    before = counts(app_db)
    inline = httpx.post(f"{api}/api/import", json={"url": article, "agentIds": [people["agent"]]},
                        headers=auth(alice))  # fmt: skip
    assert inline.status_code == 201, inline.text
    doc = inline.json()
    assert (doc["success"], doc["evaluations"], doc["backend"]) == (True, [], "legacy")
    assert fetch(app_db, 'SELECT "submittedById" FROM "Document" WHERE id = %s',
                 doc["documentId"]) == [(alice["id"],)]  # fmt: skip
    after = counts(app_db)
    assert (after["documents"], after["jobs"]) == (before["documents"] + 1, before["jobs"] + 1)

    for bad, code in (
        ({"url": "not a url"}, 400),
        ({"url": "ftp://example.org/x"}, 400),
        ({"url": "http://127.0.0.1:1/closed"}, 502),  # nothing listens: may work later
        ({"url": article, "agentIds": ["ghost"]}, 404),
        ({"url": ""}, 422),
        ({}, 422),
    ):
        refused = httpx.post(f"{api}/api/import", json=bad, headers=auth(alice))
        assert refused.status_code == code, (bad, refused.text)
        assert refused.json()["error"]
    assert counts(app_db) == after


def test_a_retry_and_a_rerun_at_once_make_one_job(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    """An admin's retry of a failed job and its owner's re-run, four of each at once:
    the evaluation gets one new job."""
    rollout(service, 0)
    alice, admin = people["alice"], people["admin"]
    for round_ in range(3):
        [doc] = new_docs(app_db, alice["id"], 1)
        failed = service.create_evaluation_job(doc, people["agent"])
        service.cancel_job(failed.id, reason="to retry")
        calls = [(f"{api}/api/monitor/jobs/{failed.id}/rerun", admin)] * 4 + [
            (f"{api}/api/docs/{doc}/evals/{people['agent']}/rerun", alice)
        ] * 4
        with ThreadPoolExecutor(8) as pool:
            codes = sorted(pool.map(lambda c: httpx.post(c[0], headers=auth(c[1]), timeout=60)
                                    .status_code, calls))  # fmt: skip
        waiting = fetch(app_db, 'SELECT count(*) FROM "Job" WHERE "evaluationId" = %s AND '
                                "status = 'PENDING'", failed.evaluation_id)  # fmt: skip
        assert (waiting, len([c for c in codes if c < 300])) == ([(1,)], 1), (round_, codes)


def test_many_requests_at_once_hold_one_connection_each(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    """More requests at once than the API's connection pool holds (5 + 10 overflow), all
    stopped half-way (the job's tasks locked): each holds one connection at a time, so
    they finish once the lock goes. A request holding one connection while it waits for
    a second would starve the pool, and time out with 500s."""
    rollout(service, 0)
    alice = people["alice"]
    job = service.create_evaluation_job(people["alices_doc"], people["agent"]).id

    def get_job() -> int:
        return httpx.get(f"{api}/api/jobs/{job}", headers=auth(alice), timeout=120).status_code

    with psycopg.connect(app_db) as locker, ThreadPoolExecutor(40) as pool:
        locker.execute('LOCK TABLE "Task" IN ACCESS EXCLUSIVE MODE')
        answers = [pool.submit(get_job) for _ in range(40)]
        # Every pooled connection is taken by a request stopped at the lock.
        assert wait_until(lambda: lock_waiters(locker, "Task") >= 15, 60)
        locker.commit()
        codes = [a.result() for a in answers]
    assert codes == [200] * 40
