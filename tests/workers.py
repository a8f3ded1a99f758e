"""Real ``celery worker`` processes for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float = 60.0, every: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy (or the timeout); return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


class CeleryWorker:
    """A ``celery worker`` subprocess in its own process group (main + pool children)."""

    def __init__(
        self,
        name: str,
        app: str = "tests.apps.worker_app",
        concurrency: int = 2,
        pool: str = "prefork",
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.app = app
        self.concurrency = concurrency
        self.pool = pool
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        fd, path = tempfile.mkstemp(
            prefix=f"celery-{name}-", suffix=".log", dir=os.environ.get("ROAST_JOBS_TEST_LOGS")
        )
        os.close(fd)
        self.log_path = Path(path)

    @property
    def hostname(self) -> str:
        return f"{self.name}@test"

    def start(self, wait: bool = True, timeout: float = 60) -> CeleryWorker:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-n",
            self.hostname,
            "-P",
            self.pool,
            "-c",
            str(self.concurrency),
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        marker = f"{self.hostname} ready."
        while time.monotonic() < deadline:
            if marker in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the main process and its pool children at once."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(ProcessLookupError):  # stray pool children
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def both_backends(
    env: dict[str, str],
    name: str,
    celery_concurrency: int,
    legacy_max_workers: int,
    queues: str = "evaluation",
) -> Iterator[CeleryWorker]:
    """A Celery worker on ``queues`` and a legacy worker, side by side on ``env``'s
    database, as during a rollout; both stopped at the end."""
    celery = CeleryWorker(
        name,
        app="roast_jobs.tasks.worker",
        concurrency=celery_concurrency,
        args=["-Q", queues],
        env=env,
    )
    command = ["roast_jobs.cli", "legacy-worker", "--max-workers"]
    legacy = subprocess.Popen(
        [sys.executable, "-m", *command, str(legacy_max_workers)],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        celery.start(timeout=120)
        yield celery
    finally:
        stop_process(legacy, 30)
        celery.stop()


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_cli(
    url: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``roast-jobs ARGS`` on ``url``'s database, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
