"""``roast-jobs rollout status|check|set``, run as an operator runs it (a subprocess) on a
database of the module's own: each rollback trigger fires on data crafted for it and only
then, thresholds come from the environment, ``set`` records who and when, and a fresh
database (no broker schema yet) is read without being changed.

Each test starts from empty job, flag and broker tables (``clean``); rows are written with
SQL so their timestamps say exactly how old they are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.rollout.status import EVALUATION_QUEUE
from roast_jobs.service import flags
from roast_jobs.service.job_service import EVALUATION_TASK, QUEUES, JobService
from tests.domain_support import fresh_database
from tests.workers import REPO, CeleryWorker, wait_until

BROKER_SCHEMA = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
EVALUATOR = "tests.apps.scripted_evaluator:ScriptedEvaluator"


# -- helpers -------------------------------------------------------------------------


def run(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``roast-jobs ARGS`` on ``url``, with the defaults unless ``env`` overrides them."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ROAST_JOBS_ROLLOUT_")
        and k not in ("ROAST_JOBS_USE_CELERY", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT")
    }
    full.update({"DATABASE_URL": url, **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check(url: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = run(url, "rollout", "check", "--json", *args, env=env)
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    verdict = json.loads(proc.stdout)
    assert verdict["healthy"] is (proc.returncode == 0)
    return proc.returncode, verdict


def fired(verdict: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in verdict["triggers"] if t["fired"]}


def trigger(verdict: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in verdict["triggers"] if t["name"] == name)


def status_json(url: str, *args: str) -> dict[str, Any]:
    proc = run(url, "rollout", "status", "--json", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def execute(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def add_jobs(
    url: str,
    evaluation: str,
    n: int = 1,
    *,
    backend: str = "legacy",
    status: str = "COMPLETED",
    created: float = 120.0,
    started: float | None = 100.0,
    finished: float | None = 60.0,
) -> list[str]:
    """``n`` "Job" rows; ``created``/``started``/``finished``: seconds before now (None:
    NULL), so pickup-to-finish is ``started - finished`` seconds."""
    rows = execute(
        url,
        """
        INSERT INTO "Job" (id, status, backend, "evaluationId", "createdAt", "startedAt",
                           "completedAt")
        SELECT gen_random_uuid()::text, %(status)s::"JobStatus", %(backend)s, %(evaluation)s,
               t.now - make_interval(secs => %(created)s),
               t.now - make_interval(secs => %(started)s::float8),
               t.now - make_interval(secs => %(finished)s::float8)
        FROM generate_series(1, %(n)s), (SELECT now() AT TIME ZONE 'UTC' AS now) AS t
        RETURNING id
        """,
        {
            "status": status,
            "backend": backend,
            "evaluation": evaluation,
            "created": created,
            "started": started,
            "finished": finished,
            "n": n,
        },
    )
    return [r[0] for r in rows]


def add_dead_letter(url: str, id: int, age_seconds: float) -> None:
    execute(
        url,
        f"""
        INSERT INTO "{BROKER_SCHEMA}".dead_letter
            (id, queue, priority, created_at, dead_at, reason, delivery_count, payload)
        VALUES (%(id)s, 'evaluation', 0, now(), now() - make_interval(secs => %(age)s),
                'rejected', 1, '{{}}')
        """,
        {"id": id, "age": age_seconds},
    )


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, str]:
    with transaction(app_db) as s:
        user = sample_data.create_user(s)
        agent = sample_data.create_agent(s, user)
        [doc] = sample_data.create_documents(s, user, 1)
        evaluation = sample_data.ensure_evaluations(s, [doc], agent)[doc]
    return {"user": user, "agent": agent, "evaluation": evaluation}


@pytest.fixture
def evaluation(people: dict[str, str]) -> str:
    return people["evaluation"]


@pytest.fixture(autouse=True)
def clean(app_db: str) -> None:
    """Empty job, flag and broker tables: every trigger judges the whole database."""
    execute(
        app_db,
        'DELETE FROM "JobMigrationStatus"; DELETE FROM "Job"; '
        'DELETE FROM "FeatureFlag"; DELETE FROM "FeatureFlagChange"',
    )
    if execute(app_db, f"SELECT to_regclass('\"{BROKER_SCHEMA}\".consumer')")[0][0]:
        execute(
            app_db,
            f'DELETE FROM "{BROKER_SCHEMA}".message; DELETE FROM "{BROKER_SCHEMA}".dead_letter; '
            f'DELETE FROM "{BROKER_SCHEMA}".consumer',
        )


# -- check: healthy, and each trigger ------------------------------------------------


def test_healthy_data_passes_with_every_figure_under_its_threshold(
    app_db: str, evaluation: str, service: JobService
) -> None:
    # Exactly 5% errors on legacy (1 of 20) is not above the 5% maximum.
    add_jobs(app_db, evaluation, 19)
    add_jobs(app_db, evaluation, 1, status="FAILED")
    add_jobs(app_db, evaluation, 30, backend="celery", started=90, finished=30)
    # Outside the window: a disaster two hours ago counts for nothing now.
    add_jobs(app_db, evaluation, 40, status="FAILED", created=7300, started=7300, finished=7200)
    add_jobs(app_db, evaluation, 5, started=7300, finished=7000)  # p95 would be 300 s
    add_dead_letter(app_db, 1, age_seconds=7200)
    # Created two hours ago but picked up a minute ago: stuck counts from startedAt.
    add_jobs(app_db, evaluation, status="RUNNING", created=7200, started=60, finished=None)
    add_jobs(app_db, evaluation, 3, status="PENDING", created=30, started=None, finished=None)

    code, verdict = check(app_db)

    assert code == 0 and fired(verdict) == {}, verdict
    assert verdict["window_seconds"] == 900
    assert trigger(verdict, "error_rate[legacy]")["value"] == pytest.approx(0.05)
    assert trigger(verdict, "error_rate[celery]")["value"] == 0
    assert trigger(verdict, "p95_pickup_to_finish[legacy]")["value"] == pytest.approx(40, abs=0.01)
    assert trigger(verdict, "p95_pickup_to_finish[celery]")["value"] == pytest.approx(60, abs=0.01)
    assert trigger(verdict, "queue_depth[legacy]")["value"] == 3
    assert trigger(verdict, "dead_letters")["value"] == 0
    assert 60 <= trigger(verdict, "stuck_job")["value"] < 120
    proc = run(app_db, "rollout", "check")
    assert proc.returncode == 0 and "healthy: no trigger fired" in proc.stdout, proc.stdout


def test_error_rate_fires_from_the_minimum_number_of_finished_jobs(
    app_db: str, evaluation: str
) -> None:
    # 20 finished (the minimum), 2 failed: 10%. Cancelled jobs count for neither side.
    add_jobs(app_db, evaluation, 18, backend="celery")
    add_jobs(app_db, evaluation, 2, backend="celery", status="FAILED")
    add_jobs(app_db, evaluation, 5, backend="celery", status="CANCELLED")

    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["error_rate[celery]"], verdict
    t = fired(verdict)["error_rate[celery]"]
    assert t["value"] == pytest.approx(0.1) and t["threshold"] == 0.05
    assert t["backend"] == "celery" and "2 of 20" in t["detail"]
    proc = run(app_db, "rollout", "check")
    assert proc.returncode == 3
    [line] = [x for x in proc.stdout.splitlines() if "FIRED" in x]
    assert "error_rate[celery]" in line and "10.0% / 5.0%" in line, proc.stdout


def test_error_rate_below_the_minimum_sample_does_not_fire(app_db: str, evaluation: str) -> None:
    # One failure of two is 50%, but two jobs prove nothing.
    add_jobs(app_db, evaluation, 1, backend="celery")
    add_jobs(app_db, evaluation, 1, backend="celery", status="FAILED")

    code, verdict = check(app_db)

    assert code == 0, verdict
    t = trigger(verdict, "error_rate[celery]")
    assert t["value"] == pytest.approx(0.5) and "not judged" in t["detail"]
    code, verdict = check(app_db, env={"ROAST_JOBS_ROLLOUT_MIN_FINISHED": "2"})
    assert code == 3 and list(fired(verdict)) == ["error_rate[celery]"], verdict


def test_queue_depth_fires_above_5000_pending(app_db: str, evaluation: str) -> None:
    add_jobs(app_db, evaluation, 5000, status="PENDING", started=None, finished=None)
    code, verdict = check(app_db)
    assert code == 0 and trigger(verdict, "queue_depth[legacy]")["value"] == 5000

    add_jobs(app_db, evaluation, 1, status="PENDING", started=None, finished=None)
    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["queue_depth[legacy]"], verdict
    t = fired(verdict)["queue_depth[legacy]"]
    assert (t["value"], t["threshold"]) == (5001, 5000)


@pytest.mark.parametrize(
    ("status", "started"), [("RUNNING", 3700.0), ("PENDING", None)], ids=["running", "pending"]
)
def test_a_job_stuck_for_more_than_an_hour_fires(
    app_db: str, evaluation: str, status: str, started: float | None
) -> None:
    add_jobs(app_db, evaluation, status=status, created=600, started=60, finished=None)
    [stuck] = add_jobs(
        app_db, evaluation, status=status, created=3700, started=started, finished=None
    )

    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["stuck_job"], verdict
    t = fired(verdict)["stuck_job"]
    assert 3700 <= t["value"] < 3760 and t["threshold"] == 3600
    assert stuck in t["detail"] and status in t["detail"]


def test_p95_pickup_to_finish_above_two_minutes_fires(app_db: str, evaluation: str) -> None:
    # 18 jobs took 10 s, 2 took 300 s: the median is fine, the p95 is not.
    add_jobs(app_db, evaluation, 18, started=70, finished=60)
    add_jobs(app_db, evaluation, 2, started=360, finished=60)

    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["p95_pickup_to_finish[legacy]"], verdict
    t = fired(verdict)["p95_pickup_to_finish[legacy]"]
    assert t["value"] == pytest.approx(300, abs=0.01) and t["threshold"] == 120


def test_new_dead_letters_fire(app_db: str, service: JobService) -> None:
    add_dead_letter(app_db, 1, age_seconds=7200)  # outside the window
    add_dead_letter(app_db, 2, age_seconds=10)

    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["dead_letters"], verdict
    t = fired(verdict)["dead_letters"]
    assert (t["value"], t["threshold"]) == (1, 0)
    assert "1 new in the window, 2 in all" in t["detail"]
    code, verdict = check(app_db, env={"ROAST_JOBS_ROLLOUT_MAX_NEW_DEAD_LETTERS": "1"})
    assert code == 0, verdict


def test_celery_jobs_waiting_without_a_live_worker_fire_and_a_real_worker_clears_it(
    app_db: str, people: dict[str, str], service: JobService, tmp_path: Path
) -> None:
    flags.rollout(100, "tests", app_db)
    service.flags.invalidate()
    with transaction(app_db) as s:
        docs = [
            sample_data.create_document(s, people["user"], "sleep 30", "Some words. " * 30)
            for _ in range(2)
        ]
    jobs = [service.create_evaluation_job(doc, people["agent"]) for doc in docs]
    assert {j.backend for j in jobs} == {"celery"}

    code, verdict = check(app_db)

    assert code == 3
    assert list(fired(verdict)) == ["celery_workers"], verdict
    t = fired(verdict)["celery_workers"]
    assert (t["value"], t["threshold"]) == (0, 1)
    assert "2 Celery job(s) PENDING, 2 message(s) waiting" in t["detail"]

    # One process slot: the first job sleeps in it, the second waits with a live worker.
    worker = CeleryWorker(
        "rollout",
        app="roast_jobs.tasks.worker",
        concurrency=1,
        args=["-Q", "evaluation"],
        env={
            "DATABASE_URL": app_db,
            "ROAST_JOBS_EVALUATOR": EVALUATOR,
            "ROAST_TEST_STATE_DIR": str(tmp_path),
            "PYTHONPATH": str(REPO),
        },
    )
    try:
        worker.start(timeout=120)
        running = "SELECT count(*) FROM \"Job\" WHERE status = 'RUNNING'"
        assert wait_until(lambda: execute(app_db, running)[0][0] == 1, 60), worker.log()[-3000:]

        code, verdict = check(app_db)

        t = trigger(verdict, "celery_workers")
        assert code == 0 and not t["fired"], verdict
        assert t["value"] >= 1 and "1 Celery job(s) PENDING" in t["detail"], t
    finally:
        worker.kill()  # the sleeping run would hold a graceful stop for 30 s


# -- thresholds, window ----------------------------------------------------------------


def test_thresholds_and_window_come_from_the_environment(app_db: str, evaluation: str) -> None:
    add_jobs(app_db, evaluation, 3, status="PENDING", started=None, finished=None)
    # Half of 20 failed 30 minutes ago: outside the default 15-minute window.
    add_jobs(app_db, evaluation, 10, created=1900, started=1850, finished=1800)
    add_jobs(app_db, evaluation, 10, status="FAILED", created=1900, started=1850, finished=1800)
    assert check(app_db)[0] == 0

    code, verdict = check(app_db, env={"ROAST_JOBS_ROLLOUT_MAX_QUEUE_DEPTH": "2"})
    assert code == 3 and list(fired(verdict)) == ["queue_depth[legacy]"], verdict
    assert fired(verdict)["queue_depth[legacy]"]["threshold"] == 2

    code, verdict = check(app_db, env={"ROAST_JOBS_ROLLOUT_WINDOW_SECONDS": "3600"})
    assert code == 3 and list(fired(verdict)) == ["error_rate[legacy]"], verdict
    assert verdict["window_seconds"] == 3600
    code, verdict = check(
        app_db, "--window", "3600", env={"ROAST_JOBS_ROLLOUT_MAX_ERROR_RATE": "0.5"}
    )
    assert code == 0 and trigger(verdict, "error_rate[legacy]")["value"] == 0.5, verdict

    proc = run(app_db, "rollout", "check", env={"ROAST_JOBS_ROLLOUT_MAX_QUEUE_DEPTH": "lots"})
    assert proc.returncode == 1 and proc.stderr.startswith("Error: bad environment"), proc.stderr


# -- status, set ------------------------------------------------------------------------


def test_status_shows_jobs_window_figures_and_migration_progress(
    app_db: str, evaluation: str, service: JobService
) -> None:
    add_jobs(app_db, evaluation, 4, status="PENDING", started=None, finished=None)
    add_jobs(app_db, evaluation, 1, status="RUNNING", created=300, started=200, finished=None)
    add_jobs(app_db, evaluation, 9, started=100, finished=60)  # 40 s each
    add_jobs(app_db, evaluation, 1, status="FAILED", started=100, finished=60)
    add_jobs(app_db, evaluation, 2, status="CANCELLED", started=None, finished=60)
    add_jobs(app_db, evaluation, 3, created=7300, started=7300, finished=7200)  # old
    moved = add_jobs(app_db, evaluation, 5, backend="celery", started=80, finished=20)
    # Failed by the migrator (it could not run), long before the window.
    [failed] = add_jobs(app_db, evaluation, status="FAILED", started=None, finished=7200)
    ledger = """
        INSERT INTO "JobMigrationStatus"
            (id, "jobId", "fromBackend", "toBackend", status, error, "runId", "createdAt")
        SELECT gen_random_uuid()::text, job, 'legacy', 'celery', %(status)s, %(error)s, %(run)s,
               now() AT TIME ZONE 'UTC' - make_interval(secs => %(age)s)
        FROM unnest(%(jobs)s::text[]) AS job
    """
    for status, error, run_id, age, jobs in (
        ("moved", None, "run-1", 3600, moved[:3]),
        ("moved", None, "run-2", 30, moved[3:]),
        ("failed", "document not found", "run-2", 20, [failed]),
    ):
        params = {"status": status, "error": error, "run": run_id, "age": age, "jobs": jobs}
        execute(app_db, ledger, params)
    flags.rollout(25, "tests", app_db)

    snap = status_json(app_db)

    assert snap["flags"]["mode"] == "canary 25%" and snap["window_seconds"] == 900
    legacy, celery = snap["backends"]["legacy"], snap["backends"]["celery"]
    assert legacy["jobs"] == {
        "PENDING": 4,
        "RUNNING": 1,
        "COMPLETED": 12,
        "FAILED": 2,
        "CANCELLED": 2,
    }
    assert legacy["window"] == {
        "completed": 9,
        "failed": 1,
        "cancelled": 2,
        "finished": 10,
        "error_rate": 0.1,
        "finished_per_minute": 0.667,  # 10 in 15 minutes
        "p95_pickup_to_finish_seconds": pytest.approx(40, abs=0.01),
    }
    assert celery["jobs"]["COMPLETED"] == 5 and celery["window"]["error_rate"] == 0
    assert snap["oldest_running"]["status"] == "RUNNING"
    assert 200 <= snap["oldest_running"]["age_seconds"] < 260
    migration = snap["migration"]
    assert migration["counts"] == [
        {"from": "legacy", "to": "celery", "status": "failed", "count": 1},
        {"from": "legacy", "to": "celery", "status": "moved", "count": 5},
    ]
    assert migration["remaining"] == 4
    assert migration["failure_reasons"] == [{"error": "document not found", "count": 1}]
    last = migration["last_run"]
    assert (last["run_id"], last["moved"], last["failed"]) == ("run-2", 2, 1)
    age = datetime.now(UTC) - datetime.fromisoformat(last["at"])
    assert timedelta(seconds=0) < age < timedelta(seconds=60)
    assert snap["broker"]["present"] is True

    text = run(app_db, "rollout", "status").stdout
    assert "canary 25%" in text
    assert "legacy -> celery: 1 failed, 5 moved" in text
    assert "last run run-2" in text and "failed 1x: document not found" in text
    assert "4 PENDING legacy job(s) remain to move" in text


def test_set_records_who_and_when_and_status_shows_it(app_db: str) -> None:
    proc = run(app_db, "rollout", "set", "50", "--by", "alice")

    assert proc.returncode == 0, proc.stderr
    rows = execute(
        app_db,
        'SELECT "flagName", "newValue", "changedBy", "changedAt" FROM "FeatureFlagChange" '
        'ORDER BY "flagName"',
    )
    assert [r[:3] for r in rows] == [
        ("celery_rollout_percent", 50, "alice"),
        ("use_celery", True, "alice"),
    ]
    when = rows[0][3]
    assert abs(datetime.now(UTC).replace(tzinfo=None) - when) < timedelta(seconds=60)
    assert "celery_rollout_percent: unset -> 50" in proc.stdout
    assert f"by alice at {when:%Y-%m-%d %H:%M:%S} UTC" in proc.stdout, proc.stdout
    snap = status_json(app_db)
    assert snap["flags"]["celery_rollout_percent"] == 50 and snap["flags"]["use_celery"] is True

    again = run(app_db, "rollout", "set", "50", "--by", "bob")
    assert again.returncode == 0 and "nothing changed; last set by alice" in again.stdout


def test_set_out_of_range_is_a_one_line_error_and_changes_nothing(app_db: str) -> None:
    flags.rollout(10, "tests", app_db)
    table = 'SELECT name, value FROM "FeatureFlag" ORDER BY name'
    changes = 'SELECT count(*) FROM "FeatureFlagChange"'
    before = (execute(app_db, table), execute(app_db, changes))

    proc = run(app_db, "rollout", "set", "101", "--by", "alice")

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "Error: celery_rollout_percent takes 0-100, not 101"
    assert (execute(app_db, table), execute(app_db, changes)) == before


def test_a_fresh_database_without_broker_schema_is_read_and_left_alone() -> None:
    with fresh_database() as url:
        snap = status_json(url)
        assert snap["broker"] == {
            "schema": BROKER_SCHEMA,
            "present": False,
            "queue": "evaluation",
            "waiting_messages": 0,
            "live_consumers": 0,
            "new_dead_letters": 0,
            "dead_letters": 0,
        }
        assert snap["flags"]["mode"] == "off" and snap["migration"]["last_run"] is None
        assert run(url, "rollout", "status").returncode == 0
        code, verdict = check(url)
        assert code == 0 and trigger(verdict, "dead_letters")["value"] == 0
        exists = "SELECT to_regnamespace(%(s)s) IS NOT NULL"
        assert execute(url, exists, {"s": BROKER_SCHEMA}) == [(False,)]


def test_database_errors_are_one_line() -> None:
    with fresh_database(upgrade=False) as url:  # no tables: never upgraded
        proc = run(url, "rollout", "check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("Error: ") and "roast-jobs db upgrade" in line, line


def test_the_evaluation_queue_is_the_services() -> None:
    assert QUEUES[EVALUATION_TASK] == EVALUATION_QUEUE
