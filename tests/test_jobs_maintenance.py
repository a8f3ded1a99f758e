"""The maintenance pass removes what retention says, and nothing else; one at a time."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from roast_jobs.config import Settings
from roast_jobs.jobs import JobManager, run_maintenance
from roast_jobs.jobs.maintenance import last_run
from roast_jobs.jobs.results import qualified_name
from tests.apps.jobs_app import app, job_record
from tests.conftest import BROKER_SCHEMA, DATABASE_URL, RESULT_SCHEMA
from tests.jobs_support import jm, wait_until
from tests.workers import REPO, CeleryWorker

__all__ = ["jm"]

S = f'"{BROKER_SCHEMA}"'


@pytest.fixture
def db() -> Iterator[psycopg.Connection]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        yield c


def settings(**values: float) -> Settings:
    return Settings(  # type: ignore[call-arg]
        DATABASE_URL=DATABASE_URL,
        broker_schema=BROKER_SCHEMA,
        result_schema=RESULT_SCHEMA,
        **values,
    )


def task_table() -> str:
    app.backend.ResultSession().close()
    return qualified_name(app.backend.task_cls.__table__)


def add_result(db: psycopg.Connection, status: str, age_seconds: float) -> str:
    task_id = f"maint-{uuid.uuid4().hex}"
    db.execute(
        f"INSERT INTO {task_table()} (id, task_id, status, date_done) "
        f"VALUES (nextval('\"{RESULT_SCHEMA}\".task_id_sequence'), %s, %s, "
        "localtimestamp - make_interval(secs => %s))",
        (task_id, status, age_seconds),
    )
    return task_id


def add_message(db: psycopg.Connection, queue: str, **cols: object) -> int:
    names = ["queue", "payload", *cols]
    values = [queue, "{}", *cols.values()]
    marks = ", ".join(["%s"] * len(values))
    row = db.execute(
        f"INSERT INTO {S}.message ({', '.join(names)}) VALUES ({marks}) RETURNING id", values
    ).fetchone()
    return row[0]


def exists(db: psycopg.Connection, sql: str, *params: object) -> bool:
    return db.execute(sql, params).fetchone() is not None


def test_pass_removes_what_retention_says_and_nothing_else(
    jm: JobManager, db: psycopg.Connection
) -> None:
    q = f"maint-{uuid.uuid4().hex[:8]}"
    old_ok = add_result(db, "SUCCESS", 13 * 3600)
    new_ok = add_result(db, "SUCCESS", 11 * 3600)
    old_failed = add_result(db, "FAILURE", 8 * 86400)
    new_failed = add_result(db, "FAILURE", 6 * 86400)
    old_revoked = add_result(db, "REVOKED", 8 * 86400)
    running = add_result(db, "STARTED", 30 * 86400)  # never deleted: not finished
    live = add_message(db, q)
    delayed = add_message(db, q, visible_at="infinity")
    dead_owner = add_message(
        db, q, lease_owner="gone/1/x", visible_at="2000-01-01", delivery_count=1
    )
    live_lease = add_message(db, q, lease_owner="alive/1/x", visible_at="infinity")
    expired = add_message(db, q, task_id=f"exp-{uuid.uuid4().hex}", expires_at="2000-01-01")
    db.execute(
        f"INSERT INTO {S}.dead_letter (id, queue, priority, created_at, dead_at, reason, "
        "delivery_count, payload) VALUES (-1, %s, 0, now(), now() - interval '8 days', 'old', "
        "1, '{}'), (-2, %s, 0, now(), now() - interval '1 day', 'new', 1, '{}')",
        (q, q),
    )
    db.execute(
        f"INSERT INTO {S}.queue (name, expires, last_used) VALUES "
        "(%s, interval '10 seconds', now() - interval '1 hour'), "
        "(%s, interval '10 seconds', now())",
        (f"{q}-abandoned", f"{q}-used"),
    )

    report = run_maintenance(app, settings(), link=jm.link)
    assert report is not None

    kept = {t: exists(db, f"SELECT 1 FROM {task_table()} WHERE task_id = %s", t) for t in (
        old_ok, new_ok, old_failed, new_failed, old_revoked, running)}  # fmt: skip
    assert kept == {
        old_ok: False,
        new_ok: True,
        old_failed: False,
        new_failed: True,
        old_revoked: False,
        running: True,
    }
    messages = {r[0]: r[1] for r in db.execute(
        f"SELECT id, lease_owner FROM {S}.message WHERE queue = %s", (q,)).fetchall()}  # fmt: skip
    assert messages == {live: None, delayed: None, dead_owner: None, live_lease: "alive/1/x"}
    assert expired not in messages
    assert exists(db, f"SELECT 1 FROM {S}.dead_letter WHERE reason = 'expired' AND queue = %s", q)
    dead = {r[0] for r in db.execute(f"SELECT id FROM {S}.dead_letter WHERE id < 0").fetchall()}
    assert dead == {-2}
    queues = {r[0] for r in db.execute(
        f"SELECT name FROM {S}.queue WHERE name LIKE %s", (f"{q}-%",)).fetchall()}  # fmt: skip
    assert queues == {f"{q}-used"}
    assert report.results_deleted >= 3 and report.leases_reclaimed >= 1
    assert report.dead_letters_deleted >= 1 and report.queues_removed >= 1
    assert report.messages_expired >= 1
    recorded = last_run(jm.link)
    assert recorded is not None and recorded[0]["results_deleted"] == report.results_deleted


def test_only_one_pass_at_a_time(jm: JobManager) -> None:
    lock = {"schema": jm.link.schema}
    with psycopg.connect(DATABASE_URL, autocommit=True) as holder:
        holder.execute(jm.link.sql.maintenance_lock, lock)
        assert run_maintenance(app, settings(), link=jm.link) is None
        holder.execute(jm.link.sql.maintenance_unlock, lock)
    assert run_maintenance(app, settings(), link=jm.link) is not None


def test_cli_runs_a_pass_and_lists_dead_letters(jm: JobManager, db: psycopg.Connection) -> None:
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    job_id = jm.send(job_record, {"label": "cli"}, queue=queue, countdown=300)
    db.execute(
        f"UPDATE {S}.message SET expires_at = now() - interval '1 second' WHERE task_id = %s",
        (job_id,),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "roast_jobs.cli", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    run = cli("maintenance", "run", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["messages_expired"] >= 1
    listed = cli("dead", "list", "--queue", queue, "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert (letter["task_id"], letter["reason"], letter["task"]) == (
        job_id,
        "expired",
        job_record.name,
    )
    shown = cli("dead", "show", str(letter["id"]), "--payload")
    assert shown.returncode == 0 and job_id in shown.stdout
    got = cli("jobs", "get", job_id, "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["state"] == "expired"
    redriven = cli("dead", "redrive", str(letter["id"]))
    assert redriven.returncode == 0 and "1 redriven" in redriven.stdout, redriven.stderr
    assert jm.get_job(job_id).state.value == "created"  # back, without its expiry
    status = cli("jobs", "status", "--queue", queue, "--json")
    assert json.loads(status.stdout)[queue]["waiting"] == 1
    missing = cli("dead", "show", "999999999")
    assert missing.returncode != 0 and "no dead letter with id 999999999" in missing.stderr
    unknown = cli("jobs", "get", "no-such-job")
    assert unknown.returncode != 0 and "no job with id 'no-such-job'" in unknown.stderr
    bad = cli("dead", "purge")
    assert bad.returncode != 0 and "--all" in bad.stderr
    purged = cli("jobs", "cancel", job_id)
    assert purged.returncode == 0 and "cancelled" in purged.stdout


def test_workers_run_the_pass_on_their_own(jm: JobManager) -> None:
    before = last_run(jm.link)
    worker = CeleryWorker(
        "maint",
        app="tests.apps.jobs_app",
        concurrency=1,
        args=["-Q", f"maint-{uuid.uuid4().hex[:8]}"],
        env={"ROAST_JOBS_MAINTENANCE_INTERVAL": "1"},
    )
    worker.start(timeout=120)
    try:
        ran = wait_until(lambda: last_run(jm.link) not in (None, before), timeout=30)
        assert ran, worker.log()[-3000:]
    finally:
        worker.stop()
