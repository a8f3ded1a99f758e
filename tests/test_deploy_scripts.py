"""``scripts/deploy.sh`` and ``scripts/rollback.sh`` end to end, as an operator runs them.

The database is RoastMyPost's as its Prisma migrations left it (``fixtures/
legacy_prisma_schema.sql``, rows included) in a scratch database: the deploy has a real
schema upgrade to do and real legacy jobs to move. The scripts run real ``pg_dump``, real
``roast-jobs`` commands and real detached ``celery`` workers; the roll back restores the
backup and the database must come back byte for byte (a plain ``pg_dump`` of it).

Also ``roast-jobs db current --check``, which the deploy's preflight asks, and the usage
errors of both scripts (caught before any of them touches a database).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from roast_jobs.db import migrate
from tests.domain_support import fresh_database
from tests.workers import REPO, wait_until

DEPLOY = REPO / "scripts" / "deploy.sh"
ROLLBACK = REPO / "scripts" / "rollback.sh"
OPS_LIB = REPO / "scripts" / "lib" / "ops.sh"  # the helpers both scripts source
ROAST_JOBS = Path(sys.executable).with_name("roast-jobs")
FIXTURE = Path(__file__).parent / "fixtures" / "legacy_prisma_schema.sql"
BROKER_SCHEMA = os.environ["ROAST_JOBS_BROKER_SCHEMA"]
RESULT_SCHEMA = os.environ["ROAST_JOBS_RESULT_SCHEMA"]

# The fixture's waiting legacy jobs (one evaluation, two PENDING rows), which the deploy
# moves to Celery, and its RUNNING one (a legacy worker's, left alone).
PENDING_JOBS = ("05b1c5d6-e7f8-490a-a5b6-8192a3b4c5d7", "Nq1rS2tU3vW4xY5zA6bC7")
AN_EVALUATION = "16c2d6e7-f809-4a1b-b6c7-92a3b4c5d6e7"
JOB_COLUMNS_ADDED = {"backend", "brokerJobId"}
TABLES_ADDED = {"alembic_version", "JobMigrationStatus", "FeatureFlag", "FeatureFlagChange"}

needs_pg_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("pg_dump", "pg_restore", "psql")),
    reason="needs the PostgreSQL client tools (pg_dump, pg_restore, psql) on PATH",
)


# -- helpers -------------------------------------------------------------------------


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def execute(url: str, sql: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def plain_dump(url: str) -> str:
    """Everything in the database as SQL (pg_dump's plain format), comparable across dumps:
    without the random keys of the \\restrict lines of recent pg_dump versions."""
    out = subprocess.run(
        ["pg_dump", "--no-password", url], capture_output=True, text=True, check=True
    ).stdout
    return "".join(
        line
        for line in out.splitlines(keepends=True)
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def row_counts(url: str) -> dict[str, int]:
    tables = [
        t for (t,) in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    return {t: query(url, f'SELECT count(*) FROM "{t}"')[0][0] for t in sorted(tables)}


def schemas(url: str) -> set[str]:
    rows = query(
        url,
        "SELECT nspname FROM pg_namespace "
        "WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    )
    return {name for (name,) in rows}


def job_columns(url: str) -> set[str]:
    rows = query(
        url,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'Job'",
    )
    return {name for (name,) in rows}


def rollout(url: str) -> dict[str, Any]:
    return dict(query(url, 'SELECT name, value FROM "FeatureFlag"'))


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def celery_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if it names a live celery process started with it."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    args = cmdline(pid)
    if "celery" in args and any(str(pidfile) in a for a in args):
        return pid
    return None


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running, and not a zombie (its parent may be a container's init that reaps late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"{result.stdout}\n{result.stderr}"


# -- the scratch deployment ----------------------------------------------------------


class Deployment:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.run_dir = tmp_path / "run"
        self.backup_dir = tmp_path / "backups"
        self.seen: set[int] = set()  # every celery pid met, for the clean-up
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ROAST_JOBS_ROLLOUT_")
            and k not in ("ROAST_JOBS_USE_CELERY", "ROAST_JOBS_CELERY_ROLLOUT_PERCENT")
        }
        self.env = {
            **env,
            # As SQLAlchemy spells it: the scripts hand pg_dump and psql a plain one.
            "DATABASE_URL": url.replace("postgresql://", "postgresql+psycopg://", 1),
            "ROAST_JOBS": str(ROAST_JOBS),
            "ROAST_JOBS_DATA_DIR": str(tmp_path / "data"),
            # ROAST_JOBS_BROKER_SCHEMA and ..._RESULT_SCHEMA: the conftest's, kept.
        }

    def script(
        self, path: Path, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", str(path), "--run-dir", str(self.run_dir), *args],
            cwd=self.run_dir.parent,
            env=self.env,
            stdin=subprocess.DEVNULL,  # no terminal: a prompt cannot be answered
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.note_processes()
        return result

    def deploy(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.script(DEPLOY, "--backup-dir", str(self.backup_dir), *args)

    def rollback(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.script(ROLLBACK, "--stop-timeout", "30", *args)

    def roast_jobs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ROAST_JOBS), *args],
            env={**self.env, "DATABASE_URL": self.url},  # roast-jobs wants postgresql://
            capture_output=True,
            text=True,
            check=False,
        )

    def pidfiles(self) -> list[Path]:
        return sorted(self.run_dir.glob("*.pid"))

    def note_processes(self) -> None:
        for pidfile in self.pidfiles():
            if (pid := celery_pid(pidfile)) is not None:
                self.seen.add(pid)

    def kill_all(self) -> None:
        """SIGKILL every celery process of the test: those of the pid files and any met
        before, each with its pool processes (a detached celery has a session, so a
        process group, of its own)."""
        self.note_processes()
        for pid in self.seen:
            if "celery" not in cmdline(pid):
                continue  # gone, or the pid now belongs to someone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group != os.getpgrp():
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def scratch() -> Iterator[str]:
    """RoastMyPost's Prisma database, with its jobs made current: in a live database the
    waiting and running jobs are minutes old (the legacy poller claims within a second),
    while the fixture's date from 2025 and would set off the stuck-job trigger at once."""
    with fresh_database(upgrade=False) as url:
        execute(url, FIXTURE.read_text())
        execute(
            url,
            """UPDATE "Job" SET "createdAt" = now() - interval '1 minute',
                    "updatedAt" = now() - interval '30 seconds',
                    "startedAt" = CASE WHEN status = 'RUNNING'
                                       THEN now() - interval '30 seconds' END
                WHERE status IN ('PENDING', 'RUNNING')""",
        )
        yield url


@pytest.fixture
def deployment(scratch: str, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(scratch, tmp_path)
    try:
        yield d
    finally:
        d.kill_all()  # before fresh_database drops the database under them


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that is not celery, for stale pid files: never to be signalled."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# -- end to end ----------------------------------------------------------------------


@needs_pg_tools
@pytest.mark.timeout(240)
def test_deploy_canary_gate_and_rollback_with_restore(
    deployment: Deployment, sleeper: subprocess.Popen[bytes]
) -> None:
    d, url = deployment, deployment.url
    before = plain_dump(url)
    counts_before = row_counts(url)
    assert "alembic_version" not in counts_before and BROKER_SCHEMA not in schemas(url)
    # A stale pid file of an earlier life, naming a process that is not celery.
    d.run_dir.mkdir()
    (d.run_dir / "worker-1.pid").write_text(f"{sleeper.pid}\n")
    canary = ("--soak", "1", "--steps", "10 100", "--workers", "1", "--concurrency", "1")

    # A dry run says every step and changes nothing: no dump, no worker, same database.
    dry = d.deploy("--dry-run", *canary)
    assert dry.returncode == 0, output(dry)
    for what in ("pg_dump --format=custom", "db upgrade", "rollout set 0", "--detach"):
        assert re.search(rf"would run: .*{re.escape(what)}", dry.stdout), (what, dry.stdout)
    assert "migrations pending" in dry.stdout
    assert "would remove the stale pid file" in dry.stdout
    assert plain_dump(url) == before
    assert not d.backup_dir.exists()
    assert d.pidfiles() == [d.run_dir / "worker-1.pid"]
    assert (d.run_dir / "worker-1.pid").read_text() == f"{sleeper.pid}\n"

    # The deploy: backup, upgrade, rollout 0, a worker and beat, forward migration, canary.
    first = d.deploy(*canary)
    assert first.returncode == 0, output(first)
    steps = re.findall(r"^==> \[(\d)/8\] (.*)$", first.stdout, re.M)
    assert [n for n, _ in steps] == ["1", "2", "3", "4", "5", "6", "7", "7", "8"], steps
    backup = Path(re.search(r"backup: (\S+\.dump) ", first.stdout).group(1))
    assert backup.parent == d.backup_dir
    listing = subprocess.run(["pg_restore", "--list", str(backup)], capture_output=True, text=True)
    assert listing.returncode == 0 and " TABLE public Job " in listing.stdout, listing.stderr
    assert not list(d.backup_dir.glob("*.partial"))
    assert query(url, "SELECT version_num FROM alembic_version") == [(migrate.head(),)]
    assert job_columns(url) >= JOB_COLUMNS_ADDED
    assert {BROKER_SCHEMA, RESULT_SCHEMA} <= schemas(url)
    # The stale pid file was replaced, its process left alone.
    assert "stale pid file" in first.stdout and sleeper.poll() is None
    worker, beat = (celery_pid(d.run_dir / f"{n}.pid") for n in ("worker-1", "beat"))
    assert worker and beat, (d.pidfiles(), first.stdout)
    # The legacy jobs were moved to Celery, and the worker did them.
    assert "moved: 2 jobs" in first.stdout, first.stdout

    def done() -> list[tuple[Any, ...]]:
        rows = query(
            url,
            'SELECT id, backend, status::text FROM "Job" WHERE id = ANY(%s)',
            [list(PENDING_JOBS)],
        )
        return rows if all(status == "COMPLETED" for _, _, status in rows) else []

    finished = wait_until(done, timeout=30)
    assert sorted(finished) == sorted((j, "celery", "COMPLETED") for j in PENDING_JOBS), query(
        url, 'SELECT id, backend, status, error FROM "Job" WHERE id = ANY(%s)', [list(PENDING_JOBS)]
    )
    assert rollout(url) == {"use_celery": True, "celery_rollout_percent": 100}
    assert "gate passed" in first.stdout and "deploy done" in first.stdout

    # Again: the same workers, no second one; the canary is done already.
    again = d.deploy(*canary)
    assert again.returncode == 0, output(again)
    assert "worker-1 already running" in again.stdout and "beat already running" in again.stdout
    assert celery_pid(d.run_dir / "worker-1.pid") == worker
    assert celery_pid(d.run_dir / "beat.pid") == beat
    workers = [
        pid
        for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if "worker" in cmdline(pid) and any(str(d.run_dir) in a for a in cmdline(pid))
    ]
    assert len([p for p in workers if parent(p) not in workers]) == 1, workers  # one main
    assert "moved: 0 jobs" in again.stdout
    assert rollout(url)["celery_rollout_percent"] == 100

    # A failing gate: at 10% with a job RUNNING for 2 hours, the gate before 50% stops it.
    assert d.roast_jobs("rollout", "set", "10", "--by", "test").returncode == 0
    execute(
        url,
        """INSERT INTO "Job" (id, status, attempts, "startedAt", "updatedAt", "evaluationId")
           VALUES ('stuck-job', 'RUNNING', 1, now() - interval '2 hours', now(), %s)""",
        [AN_EVALUATION],
    )
    gated = d.deploy("--soak", "1", "--steps", "10 50 100", "--workers", "1")
    assert gated.returncode == 3, output(gated)
    assert "stuck_job" in gated.stdout and "stuck-job" in gated.stdout, gated.stdout
    assert "deploy stopped: a rollback trigger fired" in gated.stdout
    assert "rollback.sh" in gated.stdout and f"--restore {backup}" in gated.stdout
    assert "rollout set 50" not in gated.stdout
    assert rollout(url)["celery_rollout_percent"] == 10

    # --restore without --yes, and no terminal to ask on: refused before any change.
    refused = d.rollback("--restore", str(backup))
    assert refused.returncode != 0 and "--yes" in refused.stderr, output(refused)
    assert rollout(url) == {"use_celery": True, "celery_rollout_percent": 10}
    assert celery_pid(d.run_dir / "worker-1.pid") == worker

    # The roll back: rollout 0, Celery's waiting jobs back, workers and beat stopped by their
    # pid files; a pid file naming a process that is not celery is removed, the process kept.
    (d.run_dir / "worker-2.pid").write_text(f"{sleeper.pid}\n")
    back = d.rollback()
    assert back.returncode == 0, output(back)
    assert rollout(url) == {"use_celery": False, "celery_rollout_percent": 0}
    assert "celery-to-legacy" in back.stdout
    assert not alive(worker) and not alive(beat), back.stdout
    assert d.pidfiles() == [], back.stdout
    assert f"pid {sleeper.pid}: a process that is not our celery" in back.stdout
    assert sleeper.poll() is None

    # And the backup restored: the database exactly as before the deploy.
    restored = d.rollback("--restore", str(backup), "--yes")
    assert restored.returncode == 0, output(restored)
    assert not TABLES_ADDED & set(row_counts(url))
    assert not {BROKER_SCHEMA, RESULT_SCHEMA} & schemas(url)
    assert not JOB_COLUMNS_ADDED & job_columns(url)
    assert row_counts(url) == counts_before
    assert plain_dump(url) == before
    assert sleeper.poll() is None


# -- db current --check ----------------------------------------------------------------


def test_db_current_check_exits_3_until_the_database_is_at_head() -> None:
    with fresh_database(upgrade=False) as url:
        env = {**os.environ, "DATABASE_URL": url}

        def current() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(ROAST_JOBS), "db", "current", "--check"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )

        pending = current()
        assert (pending.returncode, pending.stdout) == (3, "none\n"), pending.stderr
        assert "migrations pending" in pending.stderr and "db upgrade" in pending.stderr
        migrate.upgrade(url)
        at_head = current()
        assert (at_head.returncode, at_head.stdout, at_head.stderr) == (
            0,
            f"{migrate.head()}\n",
            "",
        )


# -- usage ---------------------------------------------------------------------------


def script(path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        ["bash", str(path), *args],
        env={**full, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("path", [DEPLOY, ROLLBACK], ids=["deploy", "rollback"])
def test_help_names_every_option(path: Path) -> None:
    result = script(path, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout
    for option in ("--dry-run", "--run-dir"):
        assert option in result.stdout


@pytest.mark.parametrize(
    ("path", "args", "env", "message"),
    [
        (DEPLOY, ["--steps", "50 10"], {"DATABASE_URL": "postgresql://x/y"}, "--steps must rise"),
        (DEPLOY, ["--steps", "0 100"], {"DATABASE_URL": "postgresql://x/y"}, "1-100"),
        (DEPLOY, ["--workers", "two"], {"DATABASE_URL": "postgresql://x/y"}, "--workers"),
        (DEPLOY, ["--soak"], {"DATABASE_URL": "postgresql://x/y"}, "--soak needs a value"),
        (DEPLOY, ["--frobnicate"], {"DATABASE_URL": "postgresql://x/y"}, "unknown argument"),
        (DEPLOY, [], {}, "DATABASE_URL is not set"),
        (ROLLBACK, ["--yes"], {"DATABASE_URL": "postgresql://x/y"}, "--yes confirms --restore"),
        (ROLLBACK, [], {}, "DATABASE_URL is not set"),
    ],
)
def test_usage_errors_are_one_line_and_exit_1(
    path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = script(path, *args, **env)
    assert result.returncode == 1, result
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    result = subprocess.run(
        ["shellcheck", "-x", str(DEPLOY), str(ROLLBACK), str(OPS_LIB)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_an_unreachable_database_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    started = time.monotonic()
    result = script(
        DEPLOY,
        "--run-dir",
        str(tmp_path / "run"),
        "--backup-dir",
        str(tmp_path / "backups"),
        # A broker option in the query: libpq refuses those, so the scripts take them out.
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/nothing?schema=jobs&sslmode=disable",
        ROAST_JOBS=str(ROAST_JOBS),
    )
    assert result.returncode == 1
    assert "cannot connect to the database of DATABASE_URL" in result.stderr, result.stderr
    assert "port 1 failed" in result.stderr and "query parameter" not in result.stderr
    assert not any(tmp_path.iterdir())
    assert time.monotonic() - started < 20
