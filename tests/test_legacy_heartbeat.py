"""The legacy worker's heartbeat, end to end: a real ``roast-jobs legacy-worker`` writes its
``"WorkerHeartbeat"`` row; ``GET /api/health/jobs`` and ``/metrics`` of a real API process
count it live while it beats and degrade once it is SIGKILLed; SIGTERM removes the row, a
new worker's beat prunes a long-dead one; a heartbeat that cannot be written (its table
locked, connections dropped) does not stop the worker."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.rows import dict_row

import roast_jobs
from roast_jobs.legacy.worker import APPLICATION_NAME
from tests.api_support import serve_api
from tests.domain_support import fresh_database
from tests.test_legacy_worker import (
    Worker,
    add_jobs,
    all_done,
    eventually,
    job,
    seed,
    terminate_connections,
)

STALE = 4  # the API's legacy_heartbeat_stale_seconds: a killed worker shows soon
BEAT = {"ROAST_JOBS_LEGACY_HEARTBEAT_SECONDS": "0.3"}
LONG_RUN = {"ROAST_TEST_EVAL_SLEEP": "300"}  # a job that keeps its slot for the test


@pytest.fixture(scope="module")
def health_api(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"ROAST_JOBS_LEGACY_HEARTBEAT_STALE_SECONDS": str(STALE)}
    with serve_api(app_db, tmp_path_factory.mktemp("api") / "log", env) as base:
        yield base


def heartbeats(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            """SELECT *, extract(epoch FROM (now() AT TIME ZONE 'UTC') - "beatAt") AS age
               FROM "WorkerHeartbeat" ORDER BY "startedAt", id"""
        ).fetchall()


def execute(url: str, sql: str, *params: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def health(api: str) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{api}/api/health/jobs", timeout=30)
    return answer.status_code, answer.json()


def legacy_check(body: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in body["checks"] if c["name"] == "legacy_workers")


def scrape_value(url: str, name: str) -> float:
    """The value of an unlabelled sample in a /metrics scrape."""
    body = httpx.get(url, timeout=30).raise_for_status().text
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} not in the scrape")


def test_health_and_metrics_follow_the_heartbeat(
    app_db: str, health_api: str, tmp_path: Path
) -> None:
    (_d, done_eval), (_d2, eval_b), (_d3, eval_c) = seed(app_db, 3)
    # One job finished just now, so that the "progress" check passes while jobs wait.
    [done_id] = add_jobs(app_db, [done_eval])
    execute(
        app_db,
        """UPDATE "Job" SET status = 'COMPLETED', attempts = 1,
           "startedAt" = now() AT TIME ZONE 'UTC', "completedAt" = now() AT TIME ZONE 'UTC'
           WHERE id = %s""",
        done_id,
    )
    code, body = health(health_api)
    assert code == 200, body  # nothing waits: no worker needed
    check = legacy_check(body)
    assert check["ok"] and check["detail"] == (
        "0 legacy job(s) waiting, 0 live legacy worker(s); no heartbeat recorded"
    )

    running_id, waiting_id = add_jobs(app_db, [eval_b, eval_c])
    code, body = health(health_api)
    assert code == 503
    assert body["reasons"] == [
        "legacy_workers: 2 legacy job(s) waiting, 0 live legacy worker(s); "
        f"no heartbeat recorded (stale after {STALE} s)"
    ]

    # One slot, taken by a long job: the second job keeps waiting while the worker beats.
    worker = Worker(app_db, tmp_path, "SlowEvaluator", max_workers=1, **BEAT, **LONG_RUN)
    worker.start().wait_ready()
    try:
        assert worker.proc is not None
        pid = worker.proc.pid
        [row] = eventually(lambda: [r for r in heartbeats(app_db) if r["running"] == 1])
        host = socket.gethostname()
        assert row["id"].startswith(f"{host}:{pid}:")
        assert (row["kind"], row["hostname"], row["pid"]) == ("legacy", host, pid)
        assert (row["slots"], row["version"]) == (1, roast_jobs.__version__)
        assert row["startedAt"] <= row["beatAt"]
        assert abs(row["age"]) < 600  # UTC, as "Job": a local-time stamp is hours off
        assert job(app_db, running_id)["status"] == "RUNNING"
        assert job(app_db, waiting_id)["status"] == "PENDING"
        # The poll loop keeps beating (not only the beat at start).
        eventually(lambda: heartbeats(app_db)[0]["beatAt"] > row["beatAt"])

        code, body = health(health_api)
        assert code == 200, body
        assert legacy_check(body)["detail"].startswith(
            "1 legacy job(s) waiting, 1 live legacy worker(s) running 1 of 1 slots; "
            "newest heartbeat "
        )
        metrics = f"{health_api}/metrics"
        assert scrape_value(metrics, "roast_jobs_legacy_workers") == 1
        assert scrape_value(metrics, "roast_jobs_legacy_worker_running_jobs") == 1
        assert scrape_value(metrics, "roast_jobs_legacy_worker_slots") == 1

        # Killed: its row stays, goes stale, and health says why.
        os.kill(pid, signal.SIGKILL)
        worker.proc.wait(10)
        code, body = eventually(lambda: (got := health(health_api))[0] == 503 and got, 30)
        [reason] = body["reasons"]
        assert reason.startswith(
            "legacy_workers: 1 legacy job(s) waiting, 0 live legacy worker(s); newest heartbeat "
        )
        assert reason.endswith(f" ago (stale after {STALE} s)")
        assert [r["id"] for r in heartbeats(app_db)] == [row["id"]]
        assert scrape_value(metrics, "roast_jobs_legacy_workers") == 0
        assert scrape_value(metrics, "roast_jobs_legacy_worker_running_jobs") == 0
    finally:
        worker.kill()  # the orphaned child too

    # A day later, a new worker's beat prunes the dead row, not another live worker's.
    execute(app_db, """UPDATE "WorkerHeartbeat" SET "beatAt" = "beatAt" - interval '1 day'""")
    execute(
        app_db,
        """INSERT INTO "WorkerHeartbeat" (id, kind, hostname, pid, "startedAt", "beatAt",
                                             slots, running, version)
           VALUES ('elsewhere:1:abcd', 'legacy', 'elsewhere', 1, now() AT TIME ZONE 'UTC',
                   now() AT TIME ZONE 'UTC', 5, 0, 'x')""",
    )
    with Worker(app_db, tmp_path, "SlowEvaluator", max_workers=1, **BEAT, **LONG_RUN) as second:
        assert second.proc is not None
        mine = f"{socket.gethostname()}:{second.proc.pid}:"
        eventually(lambda: any(r["id"].startswith(mine) for r in heartbeats(app_db)))
        ids = sorted(r["id"] for r in heartbeats(app_db))
        assert len(ids) == 2 and ids[0] == "elsewhere:1:abcd" and ids[1].startswith(mine)
        eventually(lambda: job(app_db, waiting_id)["status"] == "RUNNING")
        code, body = health(health_api)
        assert code == 200, body
        assert second.stop() == 0
        # A clean stop (SIGTERM) deletes the worker's own row at once.
        assert [r["id"] for r in heartbeats(app_db)] == ["elsewhere:1:abcd"]


def test_a_heartbeat_that_cannot_be_written_does_not_stop_the_worker(tmp_path: Path) -> None:
    with fresh_database() as url:
        [(_doc, evaluation)] = seed(url, 1)
        with psycopg.connect(url) as locker:
            # Every beat now waits for the lock and gives up: the worker must start anyway,
            # and claim and run jobs.
            locker.execute('LOCK TABLE "WorkerHeartbeat" IN ACCESS EXCLUSIVE MODE')
            with Worker(url, tmp_path, "LoggingEvaluator", max_workers=1, **BEAT) as worker:
                [job_id] = add_jobs(url, [evaluation])
                eventually(lambda: all_done(url), timeout=60)
                assert job(url, job_id)["status"] == "COMPLETED"
                eventually(lambda: "heartbeat not written (next try in 0.3 s)" in worker.log())
                locker.rollback()  # the lock goes: the beats resume

                [row] = eventually(lambda: heartbeats(url))
                # The line follows the commit that made the row: wait for it, not race it.
                eventually(lambda: "heartbeat written again" in worker.log())
                # Its connections dropped: the worker reconnects and beats on.
                eventually(lambda: terminate_connections(url, APPLICATION_NAME))
                eventually(lambda: heartbeats(url)[0]["beatAt"] > row["beatAt"])
                worker_log = worker.log()
        assert heartbeats(url) == []
        assert "Traceback" not in worker_log
