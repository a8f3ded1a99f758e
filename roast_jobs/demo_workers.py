"""The worker subprocesses of ``roast-jobs demo``: a legacy worker (``roast-jobs
legacy-worker``) and a Celery worker (``celery -A roast_jobs.tasks.worker worker``), each
in its own process group with its output in a log file; started, waited for until ready,
and stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CELERY_QUEUES = "evaluation,batch,import"
CELERY_CONCURRENCY = 2
#: Seconds a warm shutdown may take before the worker's process group is killed.
STOP_TIMEOUT = 15.0


class DemoError(RuntimeError):
    """The demo could not run; the message says why."""


@dataclass
class WorkerProcess:
    """A worker subprocess in its own process group, its output in a log file."""

    name: str
    cmd: list[str]
    ready_marker: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix=f"roast-jobs-demo-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops us
            )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ready(self) -> bool:
        if not self.alive():
            raise DemoError(f"the {self.name} worker exited at start:\n{self.log_tail()}")
        return self.ready_marker in self.log()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def terminate(self) -> None:
        """Ask for a warm shutdown: running jobs finish, nothing new starts."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, deadline: float) -> str:
        """Wait for the exit until ``deadline`` (monotonic), then SIGKILL what is left of
        the group; says how it went."""
        if self.proc is None:
            return "not started"
        how = "stopped" if self.proc.poll() is None else f"had exited ({self.proc.returncode})"
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            how = "killed (still running at the deadline)"
        with contextlib.suppress(ProcessLookupError):  # the pool children, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return how


def stop_workers(workers: Sequence[WorkerProcess], timeout: float = STOP_TIMEOUT) -> list[str]:
    """SIGTERM to all at once, then each gets until ``timeout`` before SIGKILL."""
    for w in workers:
        w.terminate()
    deadline = time.monotonic() + timeout
    return [f"{w.name} {w.stop(deadline)}" for w in workers]


def worker_processes(env: dict[str, str]) -> list[WorkerProcess]:
    """The legacy worker and the Celery worker (not started yet)."""
    host = f"demo-{os.getpid()}@{socket.gethostname()}"
    return [
        WorkerProcess(
            "legacy",
            [sys.executable, "-m", "roast_jobs.cli", "legacy-worker", "--shutdown-timeout", "10"],
            "legacy worker started",
            env,
        ),
        WorkerProcess(
            "celery",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "roast_jobs.tasks.worker",
                "worker",
                "-n",
                host,
                "-Q",
                CELERY_QUEUES,
                "-c",
                str(CELERY_CONCURRENCY),
                "-P",
                "prefork",
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            f"{host} ready.",
            env,
        ),
    ]


def wait_ready(workers: Sequence[WorkerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(w.ready() for w in workers):
        if time.monotonic() > deadline:
            late = next(w for w in workers if not w.ready())
            raise DemoError(
                f"the {late.name} worker was not ready within {timeout:.0f} s:\n{late.log_tail()}"
            )
        time.sleep(0.1)
