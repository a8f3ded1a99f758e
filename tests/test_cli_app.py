"""``roast-jobs jobs|dead`` pointed at a user's own Celery app (-A, --schema), creating
nothing when they only look, and failing in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from celery import Celery
from kombu import Connection

import roast_jobs  # noqa: F401 - registers postgresql:// for kombu
from roast_jobs.jobs.results import sqlalchemy_url

from .conftest import DATABASE_URL, RUN_ID, broker_url, drop_schema
from .workers import REPO

USER_APP = """
import roast_jobs  # registers postgresql:// for kombu
from celery import Celery

app = Celery("userapp", broker={broker!r})
app.conf.update(
    broker_transport_options={{"schema": {schema!r}, "lease_seconds": 60}},
    result_backend="roast_jobs.jobs.results:ResultBackend",
    database_url={results_url!r},
    database_table_schemas={{"task": {results!r}, "group": {results!r}}},
    result_extended=True,
    task_acks_late=True,
)


@app.task(name="user.noop")
def noop() -> None:
    return None
"""


def roast_jobs_cli(
    *args: str, env: dict[str, str | None] | None = None, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``roast-jobs ARGS`` as a user runs it (``env`` values of None unset a variable)."""
    full = {**os.environ}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    if path is not None:
        full["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def schemas_like(db: psycopg.Connection, *names: str) -> set[str]:
    rows = db.execute(
        "SELECT schema_name FROM information_schema.schemata WHERE schema_name = ANY(%s)",
        (list(names),),
    )
    return {r[0] for r in rows}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def user_app(tmp_path: Path) -> Iterator[tuple[str, str, str, Path]]:
    """A user's module ``rj_user_<id>`` (in its own folder): its broker schema, result
    schema, module name and folder. Not imported here: Celery's result table schema is
    process-wide."""
    tag = uuid.uuid4().hex[:6]
    schema, results = f"rjt_{RUN_ID}_ub{tag}", f"rjt_{RUN_ID}_ur{tag}"
    module = f"rj_user_{tag}"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(USER_APP).format(
            broker=DATABASE_URL,
            schema=schema,
            results=results,
            results_url=sqlalchemy_url(DATABASE_URL),
        )
    )
    try:
        yield schema, results, module, tmp_path
    finally:
        drop_schema(schema)
        drop_schema(results)


def test_app_option_reads_the_apps_own_schema_and_results(
    user_app: tuple[str, str, str, Path], db: psycopg.Connection
) -> None:
    schema, results, module, path = user_app
    queue = f"user-{uuid.uuid4().hex[:8]}"
    sender = Celery("sender", broker=DATABASE_URL, set_as_current=False)
    sender.conf.broker_transport_options = {"schema": schema}
    job_id = sender.send_task("user.noop", queue=queue, countdown=300).id

    for args in (
        ["jobs", "-A", module, "get", job_id, "--json"],
        ["jobs", "get", job_id, "--json", "--app", f"{module}:app"],
        ["jobs", "--schema", schema, "get", job_id, "--json"],  # roast-jobs' own app
    ):
        got = roast_jobs_cli(*args, path=path)
        assert got.returncode == 0, (args, got.stderr)
        assert json.loads(got.stdout)["state"] == "scheduled", got.stdout
    status = roast_jobs_cli("jobs", "-A", module, "status", "-Q", queue, "--json", path=path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[queue]["scheduled"] == 1, status.stdout
    listed = roast_jobs_cli("dead", "-A", module, "list", "-Q", queue, path=path)
    assert listed.returncode == 0 and "no dead letters" in listed.stdout, listed.stderr
    # Looking created nothing: no result schema before any result was stored.
    assert schemas_like(db, results) == set()

    # Cancelling stores the REVOKED result through the app's own result settings.
    cancelled = roast_jobs_cli("jobs", "-A", module, "cancel", job_id, path=path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled" in cancelled.stdout, cancelled.stdout
    got = roast_jobs_cli("jobs", "-A", module, "get", job_id, "--json", path=path)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"] == "cancelled", got.stdout
    assert schemas_like(db, results) == {results}


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "get", "some-job"],
        ["jobs", "status"],
        ["dead", "list"],
        ["dead", "show", "1"],
        ["jobs", "--schema", "{missing}", "status"],
        ["jobs", "status", "--schema", "{missing}"],
    ],
)
def test_read_only_commands_create_nothing(args: list[str], db: psycopg.Connection) -> None:
    missing, results = f"rjt_{RUN_ID}_nob", f"rjt_{RUN_ID}_nor"
    env = {"ROAST_JOBS_BROKER_SCHEMA": missing, "ROAST_JOBS_RESULT_SCHEMA": results}
    if "--schema" in args:
        env["ROAST_JOBS_BROKER_SCHEMA"] = f"rjt_{RUN_ID}_other"
    try:
        proc = roast_jobs_cli(*[a.format(missing=missing) for a in args], env=env)
        assert proc.returncode != 0, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"broker schema {missing!r} does not exist" in lines[0], proc.stderr
        assert "-A/--app" in lines[0] and "--schema" in lines[0], proc.stderr
        left = schemas_like(db, missing, results, f"rjt_{RUN_ID}_other")
        assert left == set(), left
    finally:
        for name in (missing, results, f"rjt_{RUN_ID}_other"):
            drop_schema(name)


@pytest.fixture
def existing_schema(schema: str) -> str:
    """A broker schema that exists (created by connecting to it), with nothing in it."""
    with Connection(broker_url(schema)) as conn:
        conn.connect()
    return schema


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        (
            {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"},
            ["jobs", "status"],
            "cannot connect to PostgreSQL",
        ),
        ({"DATABASE_URL": None}, ["jobs", "status"], "DATABASE_URL is not set"),
        ({"DATABASE_URL": "not a url"}, ["jobs", "get", "x"], "bad DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://[::1"}, ["dead", "list"], "bad DATABASE_URL"),
        ({}, ["jobs", "get", "no-such-job"], "no job with id 'no-such-job'"),
        ({}, ["jobs", "-A", "no_such_module_rj", "status"], "cannot load the Celery app"),
        ({}, ["jobs", "-A", "roast_jobs.config:get_settings", "status"], "not a Celery app"),
    ],
    ids=["closed-port", "unset", "malformed", "unparsable", "unknown-job", "no-module",
         "not-an-app"],
)  # fmt: skip
def test_errors_are_one_line(
    existing_schema: str, env: dict[str, str | None], args: list[str], expected: str
) -> None:
    proc = roast_jobs_cli(*args, env={"ROAST_JOBS_BROKER_SCHEMA": existing_schema, **env})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert expected in lines[0], proc.stderr


def test_config_warnings_are_one_line_each(tmp_path: Path, schema: str) -> None:
    (tmp_path / "rj_plain_app.py").write_text(
        f"import roast_jobs\nfrom celery import Celery\n"
        f"app = Celery('plain', broker={broker_url(schema)!r})\n"
    )
    with Connection(broker_url(schema)) as conn:
        conn.connect()
    proc = roast_jobs_cli("jobs", "-A", "rj_plain_app", "status", path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings), proc.stderr
    assert "task_acks_late" in proc.stderr and "reads the broker's tables only" in proc.stderr
