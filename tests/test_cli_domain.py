"""``roast-jobs worker|beat|flags|batch|import`` and ``jobs get|retry|cancel`` of RoastMyPost
jobs, run as an operator runs them: the installed executable, on a database of its own."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.domain.evaluations import upsert_evaluations
from roast_jobs.service.flags import set_flags

from .domain_support import fresh_database
from .workers import REPO, wait_until

ROAST_JOBS = REPO / ".venv" / "bin" / "roast-jobs"
BROKER_SCHEMA = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
CELERY_ON = {"ROAST_JOBS_USE_CELERY": "1", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT": "100"}
CELERY_OFF = {"ROAST_JOBS_USE_CELERY": "0"}


def run(
    url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``roast-jobs ARGS`` on ``url``; the flags table rules unless ``env`` overrides it."""
    full = {**os.environ, "DATABASE_URL": url}
    for name in ("ROAST_JOBS_USE_CELERY", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT"):
        full.pop(name, None)
    full.update(env or {})
    return subprocess.run(
        [str(ROAST_JOBS), *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(proc))


def user_error(proc: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 1 and one line ``Error: ...`` naming the problem."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert expected in lines[0], proc.stderr


def scalar(url: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


def messages(url: str, task_ids: list[str] | None = None, queue: str | None = None) -> int:
    """Broker messages waiting in ``url``'s database (0 when its broker schema is absent)."""
    table = f'"{BROKER_SCHEMA}".message'
    if not scalar(url, "SELECT to_regclass(%s) IS NOT NULL", table):
        return 0
    return scalar(
        url,
        f"SELECT count(*) FROM {table} WHERE (%s::text[] IS NULL OR task_id = ANY(%s)) "
        "AND (%s::text IS NULL OR queue = %s)",
        task_ids,
        task_ids,
        queue,
        queue,
    )


@dataclass(frozen=True)
class Seed:
    url: str
    user: str
    agent: str
    docs: list[str]


def seed(url: str, documents: int = 4) -> Seed:
    with transaction(url) as session:
        user = sample_data.create_user(session, "cli")
        agent = sample_data.create_agent(session, user)
        docs = sample_data.create_documents(session, user, documents)
    return Seed(url, user, agent, docs)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture
def seeded(database: str) -> Seed:
    return seed(database)


def one_job(s: Seed, env: dict[str, str]) -> dict[str, Any]:
    created = ok_json(
        run(
            s.url,
            "batch",
            "create",
            "--agent",
            s.agent,
            "--documents",
            s.docs[0],
            "--json",
            env=env,
        )
    )
    [job] = created["jobs"]
    return job


# -- worker, beat ----------------------------------------------------------------------


def test_worker_and_beat_default_to_the_domain_app(database: str) -> None:
    from roast_jobs.cli_domain import ALL_QUEUES
    from roast_jobs.tasks import worker

    assert ALL_QUEUES == worker.ALL_QUEUES
    help_text = " ".join(ok(run(database, "worker", "--help")).split())
    assert "[default: roast_jobs.tasks.worker]" in help_text
    assert "evaluation,batch,import,maintenance" in help_text
    beat_help = " ".join(ok(run(database, "beat", "--help")).split())
    assert "[default: roast_jobs.tasks.worker]" in beat_help
    assert "celerybeat-schedule" in beat_help
    # A typo in -Q would leave a worker idle on a queue nothing is sent to.
    user_error(run(database, "worker", "-Q", "evaluation,evalution"), "'evalution'")


def test_beat_sends_the_maintenance_task(tmp_path: Path) -> None:
    with fresh_database() as url:
        env = {**os.environ, "DATABASE_URL": url, "ROAST_JOBS_MAINTENANCE_INTERVAL": "1"}
        beat = subprocess.Popen(
            [str(ROAST_JOBS), "beat", "-s", str(tmp_path / "schedule")],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            sent = wait_until(lambda: messages(url, queue="maintenance"), timeout=30)
        finally:
            beat.terminate()  # celery beat has our pid (exec)
            _, err = beat.communicate(timeout=30)
        assert sent, err
        assert "-A roast_jobs.tasks.worker beat -s" in err


# -- flags -----------------------------------------------------------------------------


def flag_rows(url: str) -> tuple[Any, Any]:
    return (
        scalar(url, 'SELECT count(*) FROM "FeatureFlagChange"'),
        scalar(url, """SELECT json_agg(json_build_array(name, value)) FROM "FeatureFlag" """),
    )


def test_flags_show_set_and_rollout_with_history() -> None:
    with fresh_database() as url:
        shown = ok(run(url, "flags", "show"))
        assert "mode                    off" in shown
        assert "never set" in shown

        out = ok(run(url, "flags", "set", "use_celery", "on", "--by", "alice"))
        assert "use_celery: unset -> true (by alice)" in out
        assert "mode: on" in out
        out = ok(run(url, "flags", "rollout", "10%"))
        who = f"{getpass.getuser()}@{socket.gethostname()}"
        assert f"celery_rollout_percent: unset -> 10 (by {who})" in out
        assert "use_celery unchanged" in out
        assert "mode: canary 10%" in out

        data = ok_json(run(url, "flags", "show", "--json", "--history", "5"))
        assert data["mode"] == "canary 10%"
        assert data["overridden_by_environment"] == []
        assert [
            (h["flagName"], h["oldValue"], h["newValue"], h["changedBy"]) for h in data["history"]
        ] == [
            ("celery_rollout_percent", None, 10, who),
            ("use_celery", None, True, "alice"),
        ]
        text_history = ok(run(url, "flags", "show"))
        assert "alice  use_celery: unset -> true" in text_history

        # The environment wins over the table, and show says so.
        overridden = run(url, "flags", "show", env={"ROAST_JOBS_USE_CELERY": "0"})
        assert "ROAST_JOBS_USE_CELERY overrides the table's true" in ok(overridden)
        assert "mode                    off" in overridden.stdout
        data = ok_json(run(url, "flags", "show", "--json", env=CELERY_ON))
        assert data["overridden_by_environment"] == ["use_celery", "celery_rollout_percent"]
        assert data["mode"] == "on"

        # The table now sends every new job to Celery, with no override.
        ok(run(url, "flags", "rollout", "100", "--by", "bob"))
        s = seed(url, 1)
        job = one_job(s, env={})
        assert job["backend"] == "celery"
        out = ok(run(url, "flags", "rollout", "0", "--by", "bob"))
        assert "use_celery: true -> false (by bob)" in out
        assert "mode: off" in out
        assert one_job(seed(url, 1), env={})["backend"] == "legacy"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["set", "use_redis", "on"], "unknown flag 'use_redis'"),
        (["set", "use_celery", "maybe"], "use_celery takes on/off"),
        (["set", "celery_rollout_percent", "101"], "takes 0-100, not 101"),
        (["rollout", "150"], "takes 0-100, not 150"),
        (["rollout", "half"], "takes 0-100, not 'half'"),
        (["rollout", "50", "--by", ""], "say who changes the flags"),
    ],
)
def test_an_invalid_flag_change_writes_nothing(
    database: str, args: list[str], expected: str
) -> None:
    set_flags({"use_celery": False}, "setup", database)  # a row to leave alone
    before = flag_rows(database)
    user_error(run(database, "flags", *args), expected)
    assert flag_rows(database) == before


# -- batches ---------------------------------------------------------------------------


def jobs_of(url: str, batch_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(
            'SELECT id, status, backend, "brokerJobId" FROM "Job" WHERE "agentEvalBatchId" = %s',
            (batch_id,),
        ).fetchall()


def test_batch_by_documents_with_celery_off(seeded: Seed) -> None:
    a, b, c, _ = seeded.docs
    args = f"--agent {seeded.agent} --documents {a},{b} --documents {c} --name nightly"
    out = ok(run(seeded.url, "batch", "create", *args.split(), env=CELERY_OFF))
    first, fan_out, backends = out.splitlines()
    batch_id = first.split()[1].rstrip(":")
    assert first == f"batch {batch_id}: 3 jobs for agent {seeded.agent}"
    assert fan_out.startswith("fan-out: inline")
    assert backends == "backends: legacy 3, celery 0"
    rows = jobs_of(seeded.url, batch_id)
    assert {(r["status"], r["backend"], r["brokerJobId"]) for r in rows} == {
        ("PENDING", "legacy", None)
    }
    assert len(rows) == 3

    shown = ok(run(seeded.url, "batch", "show", batch_id))
    assert "name: nightly" in shown
    assert "jobs: 3 of 3 created" in shown
    assert "status: pending 3, running 0, completed 0, failed 0, cancelled 0" in shown
    assert "backends: legacy 3, celery 0" in shown
    assert "completedAt: -" in shown
    progress = ok_json(run(seeded.url, "batch", "show", batch_id, "--json"))
    assert (progress["pending"], progress["legacy"], progress["celery"]) == (3, 3, 0)
    assert progress["completed_at"] is None and progress["is_complete"] is False


def test_batch_from_a_file_with_celery_on(seeded: Seed, tmp_path: Path) -> None:
    listing = tmp_path / "docs.txt"
    a, b, _, _ = seeded.docs
    listing.write_text(f"# tonight's documents\n{a}\n\n  {b}  # the long one\n")
    args = ["--agent", seeded.agent, "--documents-file", str(listing), "--json"]
    created = ok_json(run(seeded.url, "batch", "create", *args, env=CELERY_ON))
    assert created["job_count"] == 2 and created["fan_out"] == "inline"
    assert created["document_ids"] == [a, b]
    rows = jobs_of(seeded.url, created["id"])
    assert {(r["status"], r["backend"]) for r in rows} == {("PENDING", "celery")}
    broker_ids = [r["brokerJobId"] for r in rows]
    assert messages(seeded.url, broker_ids, queue="evaluation") == 2

    progress = ok_json(run(seeded.url, "batch", "show", created["id"], "--json"))
    assert (progress["legacy"], progress["celery"], progress["expected"]) == (0, 2, 2)


def test_batch_by_target_count(seeded: Seed) -> None:
    evaluated = seeded.docs[1]
    with transaction(seeded.url) as session:
        evaluation = upsert_evaluations(session, [evaluated], seeded.agent)[evaluated]
        session.execute(
            text(
                'INSERT INTO "EvaluationVersion" (id, "agentId", "agentVersionId", '
                '"evaluationId", "documentVersionId", version) '
                "SELECT gen_random_uuid()::text, :agent, av.id, :ev, dv.id, 1 "
                'FROM "AgentVersion" av, "DocumentVersion" dv '
                'WHERE av."agentId" = :agent AND dv."documentId" = :doc'
            ),
            {"agent": seeded.agent, "ev": evaluation, "doc": evaluated},
        )
    args = ["--agent", seeded.agent, "--target-count", "3", "--json"]
    created = ok_json(run(seeded.url, "batch", "create", *args, env=CELERY_OFF))
    assert created["job_count"] == 3
    assert created["document_ids"] == [evaluated] * 3
    assert {j["backend"] for j in created["jobs"]} == {"legacy"}


def batches(url: str) -> int:
    return scalar(url, 'SELECT count(*) FROM "AgentEvalBatch"')


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (lambda s: ["--agent", "no-such-agent", "--documents", s.docs[0]], "agent not found"),
        (lambda s: ["--agent", s.agent, "--documents", "no-such-doc"], "document not found"),
        (lambda s: ["--agent", s.agent, "--target-count", "0"], "target_count must be 1-100"),
        (lambda s: ["--agent", s.agent, "--target-count", "101"], "target_count must be 1-100"),
        (lambda s: ["--agent", s.agent, "--target-count", "many"], "not 'many'"),
        (lambda s: ["--agent", s.agent, "--target-count", "2"], "no evaluated documents"),
        (lambda s: ["--agent", s.agent], "give either --target-count or the documents"),
        (lambda s: ["--agent", s.agent, "--documents", " , "], "names no document ids"),
        (
            lambda s: ["--agent", s.agent, "--documents", s.docs[0], "--target-count", "1"],
            "give either --target-count or the documents",
        ),
        (lambda s: ["--agent", s.agent, "--documents-file", "/nonexistent"], "cannot read"),
    ],
)
def test_batch_user_errors_write_nothing(seeded: Seed, make_args: Any, expected: str) -> None:
    before = batches(seeded.url)
    user_error(run(seeded.url, "batch", "create", *make_args(seeded), env=CELERY_ON), expected)
    assert batches(seeded.url) == before


def test_a_paused_system_creates_nothing(seeded: Seed) -> None:
    with psycopg.connect(seeded.url) as conn:
        conn.execute(
            'INSERT INTO "SystemPause" (id, reason) VALUES (gen_random_uuid()::text, %s)',
            ("budget review",),
        )
    try:
        before = (batches(seeded.url), messages(seeded.url))
        args = ["batch", "create", "--agent", seeded.agent, "--documents", seeded.docs[0]]
        for env in (CELERY_ON, CELERY_OFF):
            user_error(run(seeded.url, *args, env=env), "paused: budget review")
        user_error(run(seeded.url, "import", "https://example.org/a", env=CELERY_ON), "paused")
        assert (batches(seeded.url), messages(seeded.url)) == before
    finally:
        with psycopg.connect(seeded.url) as conn:
            conn.execute('UPDATE "SystemPause" SET "endedAt" = now() WHERE "endedAt" IS NULL')


def test_batch_show_of_an_unknown_batch(database: str) -> None:
    user_error(run(database, "batch", "show", "no-such-batch"), "batch not found")


# -- import ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://example.org/a", "only http and https"),
        ("not a url", "invalid"),
        ("https://user:pw@example.org/a", "invalid"),
    ],
)
def test_import_of_an_invalid_url(database: str, url: str, expected: str) -> None:
    documents = scalar(database, 'SELECT count(*) FROM "Document"')
    before = messages(database, queue="import")
    user_error(run(database, "import", url, env=CELERY_ON), expected)
    assert scalar(database, 'SELECT count(*) FROM "Document"') == documents
    assert messages(database, queue="import") == before


def test_import_on_celery_queues_one_task_per_url(seeded: Seed) -> None:
    url = f"https://example.org/articles/{seeded.agent}"
    out = ok(run(seeded.url, "import", url, "--agent", seeded.agent, env=CELERY_ON))
    assert out.startswith("queued import task ")
    task_id = out.split()[-1]
    assert messages(seeded.url, [task_id], queue="import") == 1
    again = ok_json(run(seeded.url, "import", url, "--json", env=CELERY_ON))
    assert again == {"backend": "celery", "task_id": task_id, "created": False, "result": None}
    user_error(
        run(seeded.url, "import", url, "--agent", "no-such-agent", env=CELERY_ON),
        "agent not found",
    )


ARTICLE = b"""<html><head><title>On Forecasting</title>
<meta name="author" content="Ada Lovelace"></head><body><article><h1>On Forecasting</h1>
<p>Forecasts beyond five years are hard, and yet the evidence suggests that careful
forecasters beat chance by a clear margin over many questions and many years.</p>
<p>This second paragraph gives the extractor enough text to call this an article.</p>
</article></body></html>"""


class _Article(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(ARTICLE)))
        self.end_headers()
        self.wfile.write(ARTICLE)


def test_import_with_celery_off_runs_inline(seeded: Seed) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Article)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/on-forecasting"
        env = {**CELERY_OFF, "ROAST_JOBS_IMPORT_ALLOW_PRIVATE": "1"}
        out = ok(run(seeded.url, "import", url, "--agent", seeded.agent, env=env))
    finally:
        server.shutdown()
        server.server_close()
    first, job_line = out.splitlines()
    document_id = first.split()[2].rstrip(":")
    assert first == f"imported document {document_id}: 'On Forecasting'"
    assert scalar(seeded.url, 'SELECT count(*) FROM "Document" WHERE id = %s', document_id) == 1
    job_id = job_line.split()[1]
    assert job_line == f"job {job_id} (legacy) for agent {seeded.agent}"
    assert scalar(seeded.url, 'SELECT status FROM "Job" WHERE id = %s', job_id) == "PENDING"


# -- jobs get|retry|cancel ---------------------------------------------------------------


def job_row(url: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        conn.row_factory = psycopg.rows.dict_row
        row = conn.execute('SELECT * FROM "Job" WHERE id = %s', (job_id,)).fetchone()
    assert row is not None
    return row


def test_jobs_on_a_legacy_job(seeded: Seed) -> None:
    job_id = one_job(seeded, CELERY_OFF)["id"]
    shown = ok(run(seeded.url, "jobs", "get", job_id))
    assert f"id: {job_id}" in shown and "status: PENDING" in shown and "backend: legacy" in shown
    got = ok_json(run(seeded.url, "jobs", "get", job_id, "--json"))
    assert (got["status"], got["backend"], got["tasks"]) == ("PENDING", "legacy", [])
    assert "brokerState" not in got

    user_error(run(seeded.url, "jobs", "retry", job_id), "cannot retry job")
    out = ok(run(seeded.url, "jobs", "cancel", job_id, "--reason", "wrong agent"))
    assert out == f"{job_id}: CANCELLED\n"
    row = job_row(seeded.url, job_id)
    assert (row["status"], row["cancellationReason"]) == ("CANCELLED", "wrong agent")
    user_error(run(seeded.url, "jobs", "cancel", job_id), "cannot cancel job")

    new_id = ok(run(seeded.url, "jobs", "retry", job_id, env=CELERY_OFF)).strip()
    new = job_row(seeded.url, new_id)
    assert (new["status"], new["backend"], new["originalJobId"]) == ("PENDING", "legacy", job_id)
    assert new["evaluationId"] == row["evaluationId"]


def test_jobs_on_a_celery_job(seeded: Seed) -> None:
    job = one_job(seeded, CELERY_ON)
    job_id, broker_id = job["id"], job["broker_job_id"]
    assert messages(seeded.url, [broker_id]) == 1
    got = ok_json(run(seeded.url, "jobs", "get", job_id, "--json"))
    assert (got["status"], got["backend"], got["brokerJobId"]) == ("PENDING", "celery", broker_id)
    assert got["brokerState"] == "created"

    cancelled = ok_json(run(seeded.url, "jobs", "cancel", job_id, "--json"))
    assert cancelled["status"] == "CANCELLED"
    assert messages(seeded.url, [broker_id]) == 0  # the waiting message is gone

    retried = ok_json(run(seeded.url, "jobs", "retry", job_id, "--json", env=CELERY_ON))
    assert (retried["backend"], retried["status"]) == ("celery", "PENDING")
    assert messages(seeded.url, [retried["broker_job_id"]], queue="evaluation") == 1
    assert job_row(seeded.url, retried["id"])["originalJobId"] == job_id
    # The task id of a domain job is still a Celery task to `jobs get`.
    task = ok_json(run(seeded.url, "jobs", "get", retried["broker_job_id"], "--json"))
    assert task["state"] == "created"


def send_plain_task(url: str) -> str:
    """A Celery task of some other app on ``url``'s broker."""
    from roast_jobs.config import get_settings
    from roast_jobs.jobs import JobManager
    from roast_jobs.jobs.celery_app import make_celery

    app = make_celery(get_settings().model_copy(update={"database_url": url}), main="plain")
    with JobManager(app) as jm:
        return str(jm.send("plain.noop", {"n": 1}, queue="plain"))


@pytest.mark.parametrize("migrated", [True, False], ids=["with-Job-table", "broker-only"])
def test_jobs_of_celery_task_ids_work_as_before(migrated: bool) -> None:
    with fresh_database(upgrade=migrated) as url:
        ok(run(url, "db", "init"))
        task_id = send_plain_task(url)
        got = ok_json(run(url, "jobs", "get", task_id, "--json"))
        assert (got["id"], got["state"], got["queue"]) == (task_id, "created", "plain")
        assert ok(run(url, "jobs", "cancel", task_id)) == f"{task_id}: cancelled\n"
        assert messages(url, [task_id]) == 0
        retried = ok_json(run(url, "jobs", "retry", task_id, "--json"))
        assert retried["retried"] == task_id and messages(url, [retried["id"]]) == 1
        user_error(run(url, "jobs", "get", "no-such-id"), "'no-such-id'")
        if not migrated:
            user_error(run(url, "flags", "show"), "run `roast-jobs db upgrade`")
