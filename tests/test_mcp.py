"""`roast-jobs mcp` through the official SDK's own client over stdio: the six job tools
on a real database, their answers checked against it, and refusals that write nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.api_support import mcp_calls
from tests.domain_support import fetch, rollout

TOOLS = {
    "get_job_queue_status",
    "get_failed_jobs",
    "get_batch_results",
    "spawn_batch_jobs",
    "import_article",
    "rerun_evaluation",
}


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, Any]:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
        agent = sample_data.create_agent(s, user, name="Clarity coach")
        docs = sample_data.create_documents(s, user, 6)
    return {"user": user, "agent": agent, "docs": docs}


def counts(url: str) -> tuple[int, ...]:
    return fetch(
        url,
        'SELECT (SELECT count(*) FROM "Job"), (SELECT count(*) FROM "Document"), '
        '(SELECT count(*) FROM "AgentEvalBatch")',
    )[0]


def test_queue_status_batches_and_reruns_match_the_database(
    service: JobService, people: dict[str, Any]
) -> None:
    docs, agent = people["docs"], people["agent"]
    rollout(service, 0)
    legacy = [service.create_evaluation_job(d, agent) for d in docs[:3]]
    rollout(service, 100)
    celery = [service.create_evaluation_job(d, agent) for d in docs[3:5]]
    with psycopg.connect(service.url, autocommit=True) as conn:
        conn.execute(
            'UPDATE "Job" SET status = \'RUNNING\', "startedAt" = now() WHERE id = %s',
            (legacy[0].id,),
        )
        conn.execute(
            'UPDATE "Job" SET status = \'COMPLETED\', "startedAt" = now(), '
            '"completedAt" = now(), "durationInSeconds" = 7 WHERE id = %s',
            (celery[0].id,),
        )
        conn.execute(
            "UPDATE \"Job\" SET status = 'FAILED', error = %s, attempts = 3 WHERE id = %s",
            ("503 service unavailable\nTraceback: ...", legacy[1].id),
        )

    names, answers = mcp_calls(
        service.url,
        ("get_job_queue_status", {}),
        ("get_job_queue_status", {"includeDetails": True}),
        ("get_failed_jobs", {"limit": 5}),
        ("spawn_batch_jobs", {"agentId": agent, "documentIds": docs[:2], "name": "mcp"}),
        ("rerun_evaluation", {"documentId": docs[2], "agentId": agent}),  # still PENDING
        ("rerun_evaluation", {"documentId": docs[5], "agentId": agent}),
    )
    assert names == TOOLS
    assert all(not is_error for is_error, _ in answers[:4]), answers
    plain, detailed = answers[0][1], answers[1][1]
    assert plain["summary"] == {
        "pending": 2,
        "running": 1,
        "recentlyCompleted": 1,
        "recentlyFailed": 1,
    }
    assert plain["byBackend"] == {
        "legacy": {"pending": 1, "running": 1, "recentlyCompleted": 0, "recentlyFailed": 1},
        "celery": {"pending": 1, "running": 0, "recentlyCompleted": 1, "recentlyFailed": 0},
    }
    assert plain["health"] == {"isHealthy": True, "backlogSize": 2, "processingRate": "Active"}
    assert "recentCompleted" not in plain
    [done] = detailed["recentCompleted"]
    assert (done["id"], done["duration"], done["backend"], done["agent"]) == (
        celery[0].id,
        7,
        "celery",
        "Clarity coach",
    )
    [failed] = detailed["recentFailed"]
    assert (failed["id"], failed["error"], failed["attempts"]) == (
        legacy[1].id,
        "503 service unavailable",
        3,
    )
    assert answers[2][1]["jobs"] == detailed["recentFailed"]

    batch = answers[3][1]
    assert batch["jobCount"] == 2 and len(batch["jobs"]) == 2
    in_db = fetch(
        service.url, 'SELECT count(*) FROM "Job" WHERE "agentEvalBatchId" = %s', batch["batchId"]
    )
    assert in_db == [(2,)]

    refused, message = answers[4]
    assert refused and "already has a waiting or running job" in message
    assert not answers[5][0]
    rerun = answers[5][1]
    assert fetch(service.url, 'SELECT backend FROM "Job" WHERE id = %s', rerun["jobId"]) == [
        (rerun["backend"],)
    ]

    [(refused, _), (_, results)] = mcp_calls(
        service.url,
        ("get_batch_results", {"batchId": "no-such-batch"}),
        ("get_batch_results", {"batchId": batch["batchId"]}),
    )[1]
    assert refused
    assert (results["total"], results["pending"], results["isComplete"]) == (2, 2, False)


def test_bad_requests_are_tool_errors_that_write_nothing(
    service: JobService, people: dict[str, Any]
) -> None:
    before = counts(service.url)
    _names, answers = mcp_calls(
        service.url,
        ("get_failed_jobs", {"limit": 0}),
        ("import_article", {"url": "not a url", "agentIds": [people["agent"]]}),
        ("import_article", {"url": "http://127.0.0.1/x", "agentIds": ["no-such-agent"]}),
        ("spawn_batch_jobs", {"agentId": people["agent"], "targetCount": 500}),
        ("rerun_evaluation", {"documentId": "no-such-doc", "agentId": people["agent"]}),
    )
    for is_error, message in answers:
        assert is_error, message
        assert "Traceback" not in message and message.strip()
    assert "limit must be 1-100" in answers[0][1]
    assert "target_count must be 1-100" in answers[3][1]
    assert counts(service.url) == before


def test_an_idle_queue_is_healthy() -> None:
    """The legacy rule (running > 0) called an empty queue unhealthy."""
    from roast_jobs import mcp_tools
    from tests.domain_support import fresh_database

    with fresh_database() as url:
        svc = JobService(url)
        try:
            status = mcp_tools.queue_status(svc)
        finally:
            svc.close()
    assert status["health"] == {"isHealthy": True, "backlogSize": 0, "processingRate": "Idle"}
