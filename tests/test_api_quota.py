"""RoastMyPost's evaluation quota over HTTP: each plan's evaluations per hour and month,
counted in the transaction that creates the jobs (429 with Retry-After, nothing written,
when over), exact under requests at once, windows that start again, plans changed with
the CLI. The API here runs with small limits: 3 an hour and 5 a month on REGULAR."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.demo_pages import ArticleServer
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.api_support import auth, make_people, serve_api
from tests.conftest import BROKER_SCHEMA
from tests.domain_support import fetch, rollout
from tests.workers import CeleryWorker, run_cli, wait_until

LIMITS = {
    "ROAST_JOBS_QUOTA_REGULAR_HOUR": "3",
    "ROAST_JOBS_QUOTA_REGULAR_MONTH": "5",
    "ROAST_JOBS_QUOTA_PRO_HOUR": "50",
    "ROAST_JOBS_QUOTA_PRO_MONTH": "60",
}


@pytest.fixture(scope="module")
def api(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {**LIMITS, "ROAST_JOBS_FLAG_REFRESH_SECONDS": "0.01",
           "ROAST_JOBS_IMPORT_ALLOW_NETWORKS": "127.0.0.1/32"}  # fmt: skip
    with serve_api(app_db, tmp_path_factory.mktemp("api") / "log", env) as base:
        yield base


@pytest.fixture
def user(app_db: str, service: JobService) -> dict[str, Any]:
    """A fresh REGULAR user (nothing counted), its agent, ten of its documents and a key."""
    rollout(service, 0)
    people = make_people(app_db)
    with transaction(app_db) as s:
        docs = sample_data.create_documents(s, people["alice"]["id"], 10)
        agents = [people["agent"]] + [
            sample_data.create_agent(s, people["alice"]["id"], f"Critic {i}") for i in range(3)
        ]
    return {**people["alice"], "agent": people["agent"], "agents": agents, "docs": docs}


def counted(url: str, user_id: str) -> tuple[int, int]:
    [row] = fetch(url, 'SELECT "evalsThisHour", "evalsThisMonth" FROM "User" WHERE id = %s',
                  user_id)  # fmt: skip
    return row


def jobs_of(url: str, user_id: str) -> int:
    sql = """SELECT count(*) FROM "Job" j JOIN "Evaluation" e ON e.id = j."evaluationId"
              JOIN "Document" d ON d.id = e."documentId" WHERE d."submittedById" = %s"""
    return fetch(url, sql, user_id)[0][0]


def evaluate(api: str, user: dict[str, Any], doc: str) -> httpx.Response:
    return httpx.post(f"{api}/api/docs/{doc}/evals/{user['agent']}", headers=auth(user), timeout=30)


def test_requests_over_the_hour_are_429_and_write_nothing(
    api: str, app_db: str, user: dict[str, Any]
) -> None:
    docs = user["docs"]
    many = httpx.post(
        f"{api}/api/documents/{docs[0]}/evaluations",
        json={"agentIds": [user["agent"]]},
        headers=auth(user),
    )
    assert many.status_code == 201, many.text
    assert evaluate(api, user, docs[1]).status_code == 200
    assert evaluate(api, user, docs[2]).status_code == 200
    assert counted(app_db, user["id"]) == (3, 3)
    before = jobs_of(app_db, user["id"])

    over = evaluate(api, user, docs[3])
    assert over.status_code == 429, over.text
    body = over.json()
    assert body["error"].startswith("evaluation quota exceeded: 1 more would make 4 this hour")
    assert "REGULAR plan's 3 per hour" in body["error"]
    assert (body["asked"], body["window"], body["hour"]["used"], body["hour"]["limit"]) == (
        1, "hour", 3, 3)  # fmt: skip
    assert body["hour"]["resetsAt"].endswith("+00:00")  # UTC, said so
    assert 3000 < int(over.headers["Retry-After"]) <= 3600
    # The evaluation it would have made, its job and the charge all rolled back.
    assert jobs_of(app_db, user["id"]) == before
    assert fetch(app_db, 'SELECT count(*) FROM "Evaluation" WHERE "documentId" = %s',
                 docs[3]) == [(0,)]  # fmt: skip
    assert counted(app_db, user["id"]) == (3, 3)
    rerun = httpx.post(f"{api}/api/docs/{docs[1]}/evals/{user['agent']}/rerun",
                       headers=auth(user))  # fmt: skip
    assert rerun.status_code == 400  # busy: its job waits (checked before the quota)
    mine = httpx.get(f"{api}/api/quota", headers=auth(user)).json()
    assert (mine["plan"], mine["hour"]["used"], mine["month"]["used"]) == ("REGULAR", 3, 3)
    # Batches are not counted, as in RoastMyPost.
    batch = httpx.post(f"{api}/api/batches", headers=auth(user),
                       json={"agentId": user["agent"], "documentIds": docs[4:6]})  # fmt: skip
    assert batch.status_code == 201, batch.text
    assert counted(app_db, user["id"]) == (3, 3)


def test_requests_at_once_get_exactly_the_quota_left(
    api: str, app_db: str, user: dict[str, Any]
) -> None:
    """Eight requests at once with three evaluations left: three get through. Checked
    first and charged after (as RoastMyPost did), all eight would have."""
    answers: list[int] = []
    start = threading.Barrier(8)

    def one(doc: str) -> None:
        start.wait()
        answers.append(evaluate(api, user, doc).status_code)

    threads = [threading.Thread(target=one, args=(d,)) for d in user["docs"][:8]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [200] * 3 + [429] * 5
    assert counted(app_db, user["id"]) == (3, 3)
    assert jobs_of(app_db, user["id"]) == 3


def test_windows_start_again_and_plans_change_the_limits(
    api: str, app_db: str, user: dict[str, Any]
) -> None:
    docs = user["docs"]
    for doc in docs[:3]:
        assert evaluate(api, user, doc).status_code == 200
    assert evaluate(api, user, docs[3]).status_code == 429
    # The hour is over: its count starts again, the month's goes on (5 a month).
    with transaction(app_db) as s:
        s.execute(
            text(
                'UPDATE "User" SET "hourResetAt" = "hourResetAt" - interval \'2 hours\' '
                "WHERE id = :id"
            ),
            {"id": user["id"]},
        )
    assert evaluate(api, user, docs[3]).status_code == 200
    assert evaluate(api, user, docs[4]).status_code == 200
    assert counted(app_db, user["id"]) == (2, 5)
    over = evaluate(api, user, docs[5])
    assert over.status_code == 429
    assert "this month, over the REGULAR plan's 5 per month" in over.json()["error"]
    # PRO at once: 50 an hour, 60 a month.
    made = run_cli(app_db, "users", "plan", user["id"], "pro", env=LIMITS)
    assert made.returncode == 0, made.stderr
    assert "is now on PRO: 50 evaluations an hour, 60 a month" in made.stdout
    assert evaluate(api, user, docs[5]).status_code == 200
    shown = run_cli(app_db, "users", "quota", user["id"], env=LIMITS)
    assert shown.stdout.strip().endswith("on PRO: 3/50 this hour, 6/60 this month"), shown.stdout


def post_import(api: str, user: dict[str, Any], agents: list[str], url: str) -> httpx.Response:
    body = {"url": url, "agentIds": agents}
    return httpx.post(f"{api}/api/import", headers=auth(user), json=body, timeout=30)


def test_an_import_is_charged_when_its_document_and_jobs_are_stored(
    api: str, app_db: str, user: dict[str, Any], service: JobService
) -> None:
    for doc in user["docs"][:2]:
        assert evaluate(api, user, doc).status_code == 200
    two = user["agents"][:2]
    page = "https://example.org/a-post"
    # Legacy side (the import runs in the request): refused before the page is fetched.
    inline = post_import(api, user, two, page)
    assert inline.status_code == 429 and "this hour" in inline.json()["error"], inline.text
    rollout(service, 100)
    pages = ArticleServer()
    env = {**LIMITS, "DATABASE_URL": app_db, "ROAST_JOBS_IMPORT_ALLOW_NETWORKS": "127.0.0.1/32"}
    worker = CeleryWorker("quota-import", app="roast_jobs.tasks.worker", concurrency=1,
                          args=["-Q", "import"], env=env)  # fmt: skip
    try:
        messages = f'SELECT count(*) FROM "{BROKER_SCHEMA}".message'
        before = fetch(app_db, messages)
        assert post_import(api, user, two, page).status_code == 429  # nothing sent
        assert fetch(app_db, messages) == before
        url = pages.start()
        # The same agent twice is one evaluation: it fits. Charged when it is stored.
        sent = post_import(api, user, [two[0], two[0]], url)
        assert sent.status_code == 202, sent.text
        assert counted(app_db, user["id"]) == (2, 2)
        # Asked again (two agents now) while it waits: its job, not refused, not charged.
        again = post_import(api, user, two, url)
        assert (again.status_code, again.json()["created"]) == (202, False), again.text
        worker.start(timeout=120)
        status = f"{api}/api/import/{sent.json()['jobId']}"
        done = wait_until(
            lambda: (
                (r := httpx.get(status, headers=auth(user)).json())["state"] == "completed" and r
            ),
            timeout=60,
        )
        assert done, (httpx.get(status, headers=auth(user)).text, worker.log()[-2000:])
        assert len(done["result"]["jobs"]) == 1
        assert counted(app_db, user["id"]) == (3, 3)
    finally:
        worker.stop()
        pages.stop()
        rollout(service, 0)


def test_retry_after_waits_for_every_full_window_and_a_request_too_big_is_400(
    api: str, app_db: str, user: dict[str, Any]
) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute(
            """UPDATE "User" SET "evalsThisHour" = 3, "evalsThisMonth" = 5,
                 "hourResetAt" = (now() AT TIME ZONE 'UTC') + interval '10 minutes',
                 "monthResetAt" = (now() AT TIME ZONE 'UTC') + interval '20 days'
               WHERE id = %s""",
            (user["id"],),
        )
    over = evaluate(api, user, user["docs"][0])
    assert over.status_code == 429
    # Both windows are full: the request fits only once the later one starts again.
    assert over.json()["window"] == "month"
    assert 19 * 86400 < int(over.headers["Retry-After"]) <= 20 * 86400
    # Four at once can never fit three an hour: a 400, nothing to wait for.
    too_big = httpx.post(f"{api}/api/documents/{user['docs'][1]}/evaluations",
                         json={"agentIds": user["agents"]}, headers=auth(user))  # fmt: skip
    assert too_big.status_code == 400 and "Retry-After" not in too_big.headers
    assert "4 evaluations in one request is more than the REGULAR plan's 3 per hour" in (
        too_big.json()["error"])  # fmt: skip
