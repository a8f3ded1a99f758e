"""``roast-jobs demo`` as users run it: both workers, a canary batch, an import, a flag
flip and a summary, on a fresh database and on the embedded PostgreSQL."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.domain_support import fresh_database

REPO = Path(__file__).resolve().parent.parent
# The console script of the environment running the tests (.venv/bin/roast-jobs).
ROAST_JOBS = str(Path(sys.executable).with_name("roast-jobs"))
#: A row of the summary table: backend, jobs, completed, failed, then times and grade.
SUMMARY_ROW = re.compile(r"^\s+(legacy|celery|all)\s+(\d+)\s+(\d+)\s+(\d+)\s+\S")
BATCH_LINE = re.compile(r"^(batch \d): (\d+) jobs for .* -> legacy (\d+), celery (\d+)$")


def run_demo(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ROAST_JOBS, "demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary(stdout: str) -> dict[str, tuple[int, int, int]]:
    """{backend: (jobs, completed, failed)} from the summary table."""
    rows = {}
    for line in stdout.splitlines():
        if m := SUMMARY_ROW.match(line):
            rows[m[1]] = (int(m[2]), int(m[3]), int(m[4]))
    return rows


def batches(stdout: str) -> dict[str, tuple[int, int, int]]:
    """{label: (jobs, legacy, celery)} as the demo printed them when it made the batch."""
    return {
        m[1]: (int(m[2]), int(m[3]), int(m[4]))
        for line in stdout.splitlines()
        if (m := BATCH_LINE.match(line))
    }


def fetch(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's tmp_path (private to root): as root, the embedded server runs as
    an unprivileged user that must reach the folder (as in test_demo_cli)."""
    path = Path(tempfile.mkdtemp(prefix="rjt-embedded-"))
    path.chmod(0o755)
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_demo_on_a_fresh_database() -> None:
    with fresh_database(upgrade=False) as url:  # the demo migrates it itself
        proc = run_demo(
            "--documents",
            "20",
            "--percent",
            "30",
            "--quiet",
            env={
                **os.environ,
                "DATABASE_URL": url,
            },
        )
        out = proc.stdout
        assert proc.returncode == 0, out + proc.stderr
        assert "Traceback" not in out + proc.stderr, out + proc.stderr

        # The canary split the first batch; after the flip everything went to Celery.
        made = batches(out)
        assert set(made) == {"batch 1", "batch 2"}, out
        jobs, legacy, celery = made["batch 1"]
        assert jobs == 20 and legacy + celery == 20 and legacy > 0, out
        assert made["batch 2"] == (5, 0, 5), out
        assert "rollout 30% -> 100%" in out, out

        # 20 + 5 batch jobs and the imported article's evaluation, all completed.
        rows = summary(out)
        assert set(rows) == {"legacy", "celery", "all"}, out
        assert rows["legacy"][0] >= legacy and rows["celery"][0] >= 5, out
        assert rows["legacy"][0] + rows["celery"][0] == rows["all"][0] == 26, out
        assert all(r[0] == r[1] and r[2] == 0 for r in rows.values()), out
        assert "all 26 jobs completed" in out, out
        assert "workers: legacy stopped, celery stopped" in out, out

        # What the demo left in the database: its batches completed, every job done, the
        # article imported, and the flags back as they were (never set: off).
        assert fetch(
            url,
            'SELECT count(*), count("completedAt"), sum(cardinality("requestedDocumentIds")) '
            'FROM "AgentEvalBatch"',
        ) == [(2, 2, 25)]
        assert fetch(url, 'SELECT status, count(*) FROM "Job" GROUP BY status') == [
            ("COMPLETED", 26)
        ]
        [(title, import_url)] = fetch(
            url, 'SELECT title, "importUrl" FROM "DocumentVersion" WHERE "importUrl" IS NOT NULL'
        )
        assert title in out and import_url.startswith("http://127.0.0.1:"), out
        flags = dict(fetch(url, 'SELECT name, value FROM "FeatureFlag"'))
        assert flags == {"use_celery": False, "celery_rollout_percent": 100}, flags
        assert "flags put back: off" in out, out


def test_demo_starts_and_stops_an_embedded_postgres(data_dir: Path) -> None:
    # As test_demo_cli: the dev extra installs pgserver's binaries, no skip.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["ROAST_JOBS_DATA_DIR"] = str(data_dir)
    proc = run_demo("--documents", "8", "--quiet", env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "DATABASE_URL is not set: starting an embedded PostgreSQL" in out, out
    assert set(summary(out)) == {"legacy", "celery", "all"}, out
    assert "all 11 jobs completed" in out, out  # 8 + 2 + the import's evaluation
    assert out.rstrip().endswith("embedded PostgreSQL stopped"), out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_workers() -> None:
    with fresh_database() as url:
        env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [ROAST_JOBS, "demo", "--documents", "10"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            seen = []
            for line in proc.stdout:
                seen.append(line)
                if line.startswith("workers ready"):
                    break
            pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", "".join(seen))]
            assert len(pids) == 2 and all(_alive(p) for p in pids), "".join(seen)
            proc.send_signal(signal.SIGTERM)
            rest, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # Exit 1 and "interrupted", or, when the signal lands inside a driver call that
        # turns it into another error, a failure exit: either way the workers must go.
        assert proc.returncode not in (0, None), "".join(seen) + rest + err
        assert "workers: legacy stopped, celery stopped" in rest, rest
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--percent", "101"], {}, "Invalid value for '--percent'"),
        (["--documents", "0"], {}, "Invalid value for '--documents'"),
        ([], {"DATABASE_URL": "mysql://app@localhost/app"}, "bad DATABASE_URL"),
    ],
)
def test_bad_input_gives_a_readable_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    proc = run_demo(*args, env={**os.environ, **env}, timeout=60)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
