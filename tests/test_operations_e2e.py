"""End to end, as operators meet it: the API, a Celery worker and a legacy worker as
subprocesses; at a 50% rollout a batch of 50 and an article import go in over HTTP, are
watched through the API until done, and ``/metrics``, ``/api/health/jobs`` and the MCP
status tool agree with the database."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from roast_jobs.db.session import transaction
from roast_jobs.demo_pages import ARTICLE_TITLE, ArticleServer
from roast_jobs.domain import sample_data
from roast_jobs.service import flags
from tests.api_support import auth, make_people, mcp_calls, serve_api
from tests.domain_support import fetch
from tests.workers import REPO, both_backends, wait_until

BATCH = 50


def job_counts(url: str) -> dict[tuple[str, str], int]:
    rows = fetch(url, 'SELECT backend, lower(status::text), count(*) FROM "Job" GROUP BY 1, 2')
    return {(b, s): n for b, s, n in rows}


def scraped_jobs(api: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{api}/metrics", timeout=30).raise_for_status().text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "roast_jobs_jobs" and sample.value:
                key = (sample.labels["backend"], sample.labels["state"])
                out[key] = out.get(key, 0) + sample.value
    return out


def test_half_rollout_batch_and_import_end_to_end(
    app_db: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    people = make_people(app_db)
    alice, admin = people["alice"], people["admin"]
    with transaction(app_db) as s:
        docs = sample_data.create_documents(s, alice["id"], BATCH)
    env = {
        "DATABASE_URL": app_db,
        "PYTHONPATH": str(REPO),
        "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
        "ROAST_JOBS_IMPORT_ALLOW_NETWORKS": "127.0.0.1/32",
    }
    article = ArticleServer()
    served = article.start()
    # At 50% a URL's hash picks its side: take one that lands on Celery, where the import
    # is a job of its own (the legacy side's inline import is tested in test_api_routes).
    article_url = next(u for n in range(200) if flags.bucket(u := f"{served}?from=e2e-{n}") < 50)
    log = tmp_path_factory.mktemp("e2e") / "api.log"
    try:
        with (
            serve_api(app_db, log, env) as api,
            both_backends(
                env, "e2e", celery_concurrency=2, legacy_max_workers=2, queues="evaluation,import"
            ),
        ):
            set_to = httpx.put(f"{api}/api/admin/flags", json={"rolloutPercent": 50},
                               headers=auth(admin))  # fmt: skip
            assert set_to.status_code == 200 and set_to.json()["mode"] == "canary 50%"

            made = httpx.post(
                f"{api}/api/batches",
                json={"agentId": people["agent"], "documentIds": docs, "name": "e2e"},
                headers=auth(alice),
                timeout=60,
            )
            assert made.status_code == 201, made.text
            batch_id = made.json()["batch"]["id"]
            imported = httpx.post(
                f"{api}/api/import",
                json={"url": article_url, "agentIds": [people["agent"]]},
                headers=auth(alice),
                timeout=60,
            )
            assert imported.status_code == 202, imported.text

            def batch_done() -> dict[str, Any] | None:
                shown = httpx.get(f"{api}/api/batches/{batch_id}", headers=auth(alice)).json()
                return shown if shown["isComplete"] else None

            shown = wait_until(batch_done, 300, every=1)
            assert shown, httpx.get(f"{api}/api/batches/{batch_id}", headers=auth(alice)).text
            assert shown["jobStats"]["completed"] == BATCH and shown["progress"] == 100.0
            by_backend = dict(
                fetch(
                    app_db,
                    'SELECT backend, count(*) FROM "Job" WHERE "agentEvalBatchId" = %s '
                    "AND status = 'COMPLETED' GROUP BY 1",
                    batch_id,
                )
            )
            assert shown["byBackend"] == {"legacy": by_backend.get("legacy", 0),
                                          "celery": by_backend.get("celery", 0)}  # fmt: skip
            assert min(by_backend.values()) > 0 and len(by_backend) == 2  # both took part

            status_url = f"{api}{imported.json()['statusUrl']}"

            def import_done() -> dict[str, Any] | None:
                state = httpx.get(status_url, headers=auth(alice)).json()
                return state if state["state"] in ("completed", "failed") else None

            state = wait_until(import_done, 120, every=0.5)
            assert state and state["state"] == "completed", state
            document_id = state["result"]["documentId"]
            stored = fetch(
                app_db,
                'SELECT d."submittedById", v.title FROM "Document" d JOIN "DocumentVersion" v '
                'ON v."documentId" = d.id WHERE d.id = %s',
                document_id,
            )
            assert stored == [(alice["id"], ARTICLE_TITLE)]
            evaluated = f"{api}/api/docs/{document_id}/evals/{people['agent']}"

            def import_evaluated() -> bool:
                found = httpx.get(evaluated, headers=auth(alice))
                latest = found.json()["evaluation"]["latestJob"] if found.is_success else None
                return bool(latest) and latest["status"] == "COMPLETED"

            assert wait_until(import_evaluated, 120, every=0.5), httpx.get(evaluated).text

            # Everything finished: the operators' views agree with the table.
            in_db = job_counts(app_db)
            assert in_db[("legacy", "completed")] + in_db[("celery", "completed")] == BATCH + 1
            assert scraped_jobs(api) == {k: float(v) for k, v in in_db.items()}
            health = httpx.get(f"{api}/api/health/jobs", timeout=30)
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "healthy"
            [(error, status)] = mcp_calls(app_db, ("get_job_queue_status", {}))[1]
            assert not error, status
            assert status["summary"]["recentlyCompleted"] == BATCH + 1
            assert status["summary"]["pending"] == status["summary"]["running"] == 0
            for backend in ("legacy", "celery"):
                assert (
                    status["byBackend"][backend]["recentlyCompleted"]
                    == in_db[(backend, "completed")]
                )
    finally:
        article.stop()
