"""The HTTP API as a user meets it: `roast-jobs api` under uvicorn in a subprocess, keys
made and revoked with the CLI, owner-only jobs, admin routes, health and metrics."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.service.job_service import JobService
from tests.api_support import auth
from tests.domain_support import fetch, rollout
from tests.workers import run_cli


def test_keys_are_shown_once_and_stored_as_hashes(app_db: str, people: dict[str, Any]) -> None:
    key = people["alice"]["key"]
    assert key.startswith("rmp_") and len(key) > 40
    stored = fetch(app_db, 'SELECT "keyHash", prefix FROM "ApiKey" WHERE "userId" = %s',
                   people["alice"]["id"])  # fmt: skip
    assert [(len(h), p) for h, p in stored] == [(64, key[:12])]
    dump = str(fetch(app_db, 'SELECT * FROM "ApiKey"'))
    assert key not in dump
    listed = run_cli(app_db, "keys", "list", people["alice"]["id"])
    assert key[:12] in listed.stdout and key not in listed.stdout


def test_a_job_is_its_document_owners_and_admins_only(
    api: str, service: JobService, people: dict[str, Any]
) -> None:
    rollout(service, 0)
    job = service.create_evaluation_job(people["alices_doc"], people["agent"])
    url = f"{api}/api/jobs/{job.id}"
    mine = httpx.get(url, headers=auth(people["alice"]))
    assert mine.status_code == 200, mine.text
    body = mine.json()
    for field in ("id", "status", "createdAt", "completedAt", "error", "logs", "priceInDollars",
                  "durationInSeconds", "attempts", "originalJobId", "tasks"):  # fmt: skip
        assert field in body
    assert (body["id"], body["status"], body["backend"]) == (job.id, "PENDING", "legacy")
    assert httpx.get(url, headers=auth(people["admin"])).status_code == 200
    theirs = httpx.get(url, headers=auth(people["bob"]))
    unknown = httpx.get(f"{api}/api/jobs/no-such-job", headers=auth(people["bob"]))
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"error": f"job {job.id!r} not found"}  # nothing to tell apart

    for headers in ({}, {"Authorization": "Bearer rmp_wrong"}, {"Authorization": "Basic x"}):
        refused = httpx.get(url, headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"


def test_a_revoked_key_is_refused_at_once(api: str, app_db: str) -> None:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
    key = run_cli(app_db, "keys", "create", user).stdout.strip()
    flags_url = f"{api}/api/admin/flags"
    assert httpx.get(flags_url, headers={"Authorization": f"Bearer {key}"}).status_code == 403
    revoked = run_cli(app_db, "keys", "revoke", key[:12])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
    assert httpx.get(flags_url, headers={"Authorization": f"Bearer {key}"}).status_code == 401
    assert run_cli(app_db, "keys", "revoke", "rmp_nothing").returncode == 1


def test_admins_set_the_rollout_and_bad_input_writes_nothing(
    api: str, app_db: str, people: dict[str, Any]
) -> None:
    url = f"{api}/api/admin/flags"
    assert httpx.get(url, headers=auth(people["bob"])).status_code == 403
    changes = fetch(app_db, 'SELECT count(*) FROM "FeatureFlagChange"')[0][0]
    for bad in ({"rolloutPercent": 101}, {"rolloutPercent": "half"}, {}, []):
        refused = httpx.put(url, json=bad, headers=auth(people["admin"]))
        assert refused.status_code == 422, refused.text
    assert fetch(app_db, 'SELECT count(*) FROM "FeatureFlagChange"')[0][0] == changes
    done = httpx.put(url, json={"rolloutPercent": 40}, headers=auth(people["admin"]))
    assert done.status_code == 200 and done.json()["mode"] == "canary 40%"
    stored = fetch(
        app_db,
        'SELECT "newValue", "changedBy" FROM "FeatureFlagChange" '
        "WHERE \"flagName\" = 'celery_rollout_percent' ORDER BY id DESC LIMIT 1",
    )
    assert stored == [(40, f"api:{people['admin']['id']}")]
    assert httpx.get(url, headers=auth(people["admin"])).json()["celery_rollout_percent"] == 40


def test_health_says_why_it_is_degraded_and_metrics_and_openapi_are_served(
    api: str, app_db: str, service: JobService, people: dict[str, Any]
) -> None:
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute('DELETE FROM "Job"')
    healthy = httpx.get(f"{api}/api/health/jobs")
    assert healthy.status_code == 200, healthy.text
    assert healthy.json()["status"] == "healthy"

    rollout(service, 0)
    job = service.create_evaluation_job(people["bobs_doc"], people["agent"])
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute(
            'UPDATE "Job" SET status = \'RUNNING\', "startedAt" = '
            "(now() AT TIME ZONE 'UTC') - interval '2 hours' WHERE id = %s",
            (job.id,),
        )
    degraded = httpx.get(f"{api}/api/health/jobs")
    assert degraded.status_code == 503
    reasons = degraded.json()["reasons"]
    assert len(reasons) == 1 and reasons[0].startswith("stuck_job: ") and job.id in reasons[0]

    metrics = httpx.get(f"{api}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    line = 'roast_jobs_jobs{backend="legacy",state="running",task="evaluation"} 1.0'
    assert line in metrics.text
    paths = httpx.get(f"{api}/openapi.json").json()["paths"]
    assert {"/api/jobs/{job_id}", "/api/admin/flags", "/api/health/jobs", "/metrics"} <= set(paths)


def test_the_broker_link_starts_with_the_server_not_in_a_request(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """On a database the broker never used, the server's start creates the broker's
    schema: the first request that sends a job does not do it inside its transaction."""
    from roast_jobs.config import get_settings
    from tests.api_support import serve_api
    from tests.domain_support import fresh_database

    schema = get_settings().broker_schema
    with fresh_database() as url:
        exists = "SELECT count(*) FROM pg_namespace WHERE nspname = %s"
        assert fetch(url, exists, schema) == [(0,)]
        with serve_api(url, tmp_path_factory.mktemp("api-start") / "log"):
            assert fetch(url, exists, schema) == [(1,)]
