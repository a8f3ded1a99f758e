"""Helpers of ``bench_domain.py``: the throwaway database, the worker subprocesses, the
clocks, and the table.

Heavy imports (psycopg, psutil, roast_jobs) happen inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_EVALUATOR = "roast_jobs.domain.offline_evaluator:OfflineEvaluator"
WORKER_APP = "roast_jobs.tasks.worker"
#: Settings that would change what is measured (the backend, the legacy poller's
#: defaults, the evaluator): the benchmark runs without them, in itself and its workers.
UNSET_ENV = (
    "ROAST_JOBS_USE_CELERY",
    "ROAST_JOBS_CELERY_ROLLOUT_PERCENT",
    "ROAST_JOBS_LEGACY_POLL_INTERVAL",
    "ROAST_JOBS_LEGACY_MAX_WORKERS",
    "ROAST_JOBS_EVALUATOR",
    "ROAST_JOBS_EVALUATION_TIME_LIMIT",
    "ROAST_JOBS_BATCH_INLINE_MAX",
    "ROAST_JOBS_BATCH_CHUNK_SIZE",
)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- numbers -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


# -- the throwaway database ----------------------------------------------------------------


def database_url_for(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def create_database(server_url: str) -> tuple[str, str]:
    """``CREATE DATABASE rj_bench_<random>`` on ``server_url``'s server: (name, url)."""
    import psycopg

    name = f"rj_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, database_url_for(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C: the scratch database is dropped on the way out."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """A new database on ``server_url``'s server, migrated, dropped at the end."""
    from roast_jobs.db.migrate import upgrade

    name, url = create_database(server_url)
    log(f"database {name} created")
    try:
        upgrade(url)
        yield url
    finally:
        from roast_jobs.broker.connections import close_pools
        from roast_jobs.db.session import dispose_engines

        with contextlib.suppress(Exception):
            dispose_engines()
        with contextlib.suppress(Exception):
            close_pools()
        try:
            drop_database(server_url, name)
            log(f"database {name} dropped")
        except Exception as exc:
            print(f"could not drop database {name}: {exc!r}", file=sys.stderr)


def clock_offset(url: str, samples: int = 15) -> tuple[float, float]:
    """(database clock - this process's clock, round trip) in seconds, from the sample with
    the shortest round trip: DB times minus the offset are on this process's clock."""
    import psycopg

    best: tuple[float, float] | None = None
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(samples):
            t0 = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            t1 = time.time()
            assert row is not None
            rtt = t1 - t0
            if best is None or rtt < best[1]:
                best = (float(row[0]) - (t0 + t1) / 2, rtt)
    assert best is not None
    return best


def server_info(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), "
            "current_setting('synchronous_commit'), current_setting('shared_buffers'), "
            "current_setting('max_connections')"
        ).fetchone()
    assert row is not None
    return (
        f"PostgreSQL {row[0]} (fsync={row[1]}, synchronous_commit={row[2]}, "
        f"shared_buffers={row[3]}, max_connections={row[4]})"
    )


# -- worker subprocesses -------------------------------------------------------------------


def machine_info(database_url: str) -> list[str]:
    """Lines that say where a benchmark ran: machine, versions, the server."""
    import platform

    import celery
    import kombu
    import psycopg
    import sqlalchemy

    from roast_jobs.broker.connections import mask_url

    lines = [
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start",
        f"python {platform.python_version()}, celery {celery.__version__}, "
        f"kombu {kombu.__version__}, psycopg {psycopg.__version__}, "
        f"sqlalchemy {sqlalchemy.__version__}",
        f"server: {mask_url(database_url)}",
    ]
    try:
        lines.append(server_info(database_url))
    except Exception as exc:
        lines.append(f"PostgreSQL: unavailable ({exc!r})")
    return lines


def worker_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET_ENV}
    env["DATABASE_URL"] = url
    env["ROAST_JOBS_EVALUATOR"] = DEFAULT_EVALUATOR
    return env


class WorkerProcess:
    """A worker subprocess in its own session (Ctrl-C in the terminal reaches only us),
    logging to a file; ``stop`` sends SIGTERM, then SIGKILL to it and its descendants."""

    ready_timeout = 120.0

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after: float | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        self.started_at = time.monotonic()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}")

    def is_ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self) -> WorkerProcess:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if self.is_ready():
                self.ready_after = time.monotonic() - self.started_at
                return self
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} not ready in {self.ready_timeout:.0f}s:\n{self.log_tail()}"
        )

    def descendants(self) -> list[Any]:
        import psutil

        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a warm shutdown: running jobs finish), then SIGKILL after ``timeout``.
        Children that outlive their parent (the legacy worker's lead groups of their
        own) are killed by pid."""
        import psutil

        proc = self.proc
        if proc is None:
            return None
        kids = self.descendants()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kids += self.descendants()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.kill()
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # stray members of its group
            os.killpg(proc.pid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                if kid.is_running():
                    kid.kill()
        return proc.returncode

    def error_lines(self) -> list[str]:
        return [
            ln
            for ln in self.log_text().splitlines()
            if " ERROR" in ln or "CRITICAL" in ln or ln.startswith("Traceback")
        ]


class CeleryWorker(WorkerProcess):
    """``celery -A roast_jobs.tasks.worker worker -P prefork -c C -Q QUEUES -l WARNING``;
    ready when it answers a ping (``celery inspect ping``, through the app's control)."""

    def __init__(
        self,
        label: str,
        url: str,
        queues: str,
        log_path: Path,
        ping: Callable[[str], bool],
        concurrency: int = 2,
    ) -> None:
        self.hostname = f"bench-{label}-{uuid.uuid4().hex[:6]}@bench"
        cmd = [
            sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
            "-P", "prefork", "-c", str(concurrency), "-l", "WARNING", "-Q", queues,
            "-n", self.hostname, "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        super().__init__(f"celery worker {label}", cmd, worker_env(url), log_path)
        self._ping = ping

    def is_ready(self) -> bool:
        return self._ping(self.hostname)


class LegacyWorker(WorkerProcess):
    """``roast-jobs legacy-worker`` with its defaults (poll 1 s, 5 at once)."""

    def __init__(self, label: str, url: str, log_path: Path) -> None:
        script = Path(sys.executable).with_name("roast-jobs")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "roast_jobs.cli"]
        super().__init__(f"legacy worker {label}", [*base, "legacy-worker"], worker_env(url),
                         log_path)  # fmt: skip

    def is_ready(self) -> bool:
        return "legacy worker started" in self.log_text()


@contextlib.contextmanager
def running(worker: WorkerProcess) -> Any:
    """Start ``worker``, wait until it is ready, stop it on the way out (errors too)."""
    try:
        worker.start()
        worker.wait_ready()
        log(f"{worker.name} ready after {worker.ready_after:.1f}s")
        yield worker
    finally:
        code = worker.stop()
        if code not in (0, None):
            log(f"{worker.name} exited with {code}")
