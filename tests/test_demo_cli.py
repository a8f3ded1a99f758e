"""The ``roast-jobs`` command as users run it: real subprocesses, real PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from roast_jobs.embedded import EmbeddedPostgres, EmbeddedPostgresError

from .conftest import RUN_ID, drop_schema

REPO = Path(__file__).resolve().parent.parent
LIVE_LINE = re.compile(r"^\s+\+\s*[\d.]+s\s+[0-9a-f]{8}\s+p\d\s+delay \ds\s+wait\s+-?\d+ ms")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir outside pytest's tmp_path, which is private to root: when the tests run as
    root, the embedded server runs as an unprivileged user that must reach the folder."""
    path = Path(tempfile.mkdtemp(prefix="rjt-embedded-"))
    path.chmod(0o755)
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def roast_jobs(*args: str, env: dict[str, str] | None = None, timeout: float = 240):
    """Run ``roast-jobs ARGS`` with the test environment (plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_demo_on_the_test_database() -> None:
    proc = roast_jobs("demo-broker", "--tasks", "40", "--seed", "7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished      40/40 tasks" in proc.stdout, proc.stdout
    assert "all 40 tasks finished" in proc.stdout, proc.stdout
    # One live line per task: "+0.12s  <id>  p7  delay 0s  wait 12 ms  score 0.42".
    lines = [line for line in proc.stdout.splitlines() if LIVE_LINE.match(line)]
    assert len(lines) == 40, proc.stdout


def test_demo_starts_and_stops_an_embedded_postgres(data_dir: Path) -> None:
    # The dev extra installs pgserver's binaries: a server that cannot start is a failure.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["ROAST_JOBS_DATA_DIR"] = str(data_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", "demo-broker", "--tasks", "20", "--quiet"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 20 tasks finished" in proc.stdout, proc.stdout
    assert "embedded PostgreSQL stopped" in proc.stdout, proc.stdout


def test_embedded_postgres_start_reuse_and_stop(data_dir: Path) -> None:
    server = EmbeddedPostgres(data_dir, database="roast")
    url = server.start()  # no skip: the dev extra ships pgserver's binaries
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("roast",)
            conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
        # A second server on the same data dir is refused while this process lives.
        other = EmbeddedPostgres(data_dir, database="roast")
        try:
            with pytest.raises(EmbeddedPostgresError, match="in use by process"):
                other.start()
        finally:
            other.stop()
    finally:
        server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=3)
    assert not (server.pgdata / "postmaster.pid").exists()

    assert server.pgdata.parent == data_dir  # not a temporary fallback
    # The data dir is kept and used again: what was written above is still there.
    again = EmbeddedPostgres(data_dir, database="roast")
    url = again.start()
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT answer FROM kept").fetchone() == (42,)
    finally:
        again.stop()


def test_db_init_creates_both_schemas(db: psycopg.Connection) -> None:
    broker, results = f"rjt_{RUN_ID}_init_b", f"rjt_{RUN_ID}_init_r"
    env = {"ROAST_JOBS_BROKER_SCHEMA": broker, "ROAST_JOBS_RESULT_SCHEMA": results}
    try:
        for _ in range(2):  # and again: nothing to do the second time
            proc = roast_jobs("db", "init", env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        tables = {
            row[0]
            for row in db.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_schema IN (%s, %s)",
                (broker, results),
            )
        }
        assert f"{results}.celery_taskmeta" in tables, tables
        assert f"{broker}.message" in tables, tables
    finally:
        drop_schema(broker)
        drop_schema(results)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["demo-broker", "--tasks", "0"], {}, "Invalid value for '--tasks'"),
        (["demo-broker", "--tasks", "many"], {}, "Invalid value for '--tasks'"),
        (["demo-broker"], {"DATABASE_URL": "mysql://app@localhost/app"}, "bad DATABASE_URL"),
        (["db", "init"], {"DATABASE_URL": "not a url"}, "bad DATABASE_URL"),
        (
            ["worker"],
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
            "cannot connect to PostgreSQL",
        ),
    ],
)
def test_bad_input_gives_a_readable_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    proc = roast_jobs(*args, env=env)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_password_is_not_printed() -> None:
    secret = uuid.uuid4().hex
    url = f"postgresql://nobody:{secret}@127.0.0.1:1/none"
    proc = roast_jobs("db", "init", env={"DATABASE_URL": url})
    assert proc.returncode != 0
    assert "cannot connect to PostgreSQL" in proc.stderr, proc.stderr
    assert secret not in proc.stdout + proc.stderr
