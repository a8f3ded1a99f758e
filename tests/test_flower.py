"""Flower on the broker: its own CLI, a real worker with events (-E), its REST API over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.apps.worker_app import add
from tests.workers import REPO, CeleryWorker, wait_until

APP = "tests.apps.worker_app"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flower:
    """``celery -A tests.apps.worker_app flower`` in its own process group."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # With the workers' logs: kept when a test failed, removed with them otherwise.
        fd, path = tempfile.mkstemp(
            prefix="flower-", suffix=".log", dir=os.environ.get("ROAST_JOBS_TEST_LOGS")
        )
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "celery", "-A", APP, "flower",
            f"--port={self.port}", "--address=127.0.0.1",
        ]  # fmt: skip
        env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        up = wait_until(lambda: self.get_text("/healthcheck") == "OK", timeout=120)
        assert up, f"flower did not come up:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def get_text(self, path: str, timeout: float = 10.0) -> str | None:
        """GET ``path``; None while the server is not answering or on an HTTP error."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"flower exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.base + path, timeout=timeout) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def get_json(self, path: str) -> Any:
        text = self.get_text(path)
        return None if text is None else json.loads(text)

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read().decode())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # stray children
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def worker() -> Iterator[CeleryWorker]:
    w = CeleryWorker("fw1", args=["-E"])
    try:
        w.start(timeout=120)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def flower(worker: CeleryWorker) -> Iterator[Flower]:
    f = Flower()
    try:
        f.start()
        # Flower's event receiver is live once the worker's heartbeats reach it.
        alive = wait_until(
            lambda: (f.get_json("/api/workers?status=1") or {}).get(worker.hostname), timeout=90
        )
        assert alive, f"flower saw no events from {worker.hostname}:\n{f.log()}"
        yield f
    finally:
        f.stop()


def test_flower_lists_the_worker(flower: Flower, worker: CeleryWorker) -> None:
    # ?refresh=1 makes Flower broadcast stats/registered/active_queues... and wait 1 s.
    def listed() -> dict[str, Any] | None:
        workers = flower.get_json("/api/workers?refresh=1") or {}
        info = workers.get(worker.hostname) or {}
        return info if {"stats", "registered", "active_queues"} <= set(info) else None

    info = wait_until(listed, timeout=90)
    assert info, f"{flower.get_text('/api/workers')}\n{flower.log()}\n{worker.log()[-2000:]}"
    assert worker.proc is not None and info["stats"]["pid"] == worker.proc.pid
    assert "tests.apps.worker_app.add" in info["registered"]
    assert "celery" in {q["name"] for q in info["active_queues"]}


def test_flower_lists_succeeded_tasks(flower: Flower, worker: CeleryWorker) -> None:
    sent = [add.delay(i, 100) for i in range(3)]
    assert [r.get(timeout=90) for r in sent] == [100, 101, 102]

    def succeeded() -> dict[str, Any] | None:
        tasks = flower.get_json("/api/tasks") or {}
        if all((tasks.get(r.id) or {}).get("state") == "SUCCESS" for r in sent):
            return tasks
        return None

    tasks = wait_until(succeeded, timeout=60)
    assert tasks, f"{flower.get_text('/api/tasks')}\n{flower.log()}"
    for i, r in enumerate(sent):
        assert tasks[r.id]["name"] == "tests.apps.worker_app.add"
        assert tasks[r.id]["worker"] == worker.hostname
        assert tasks[r.id]["result"] == str(i + 100)


def test_flower_applies_a_task_and_reads_its_result(flower: Flower, worker: CeleryWorker) -> None:
    # Flower publishes through the broker and reads the database result backend.
    sent = flower.post_json("/api/task/async-apply/tests.apps.worker_app.add", {"args": [7, 8]})
    task_id = sent["task-id"]

    def result() -> Any:
        got = flower.get_json(f"/api/task/result/{task_id}") or {}
        return got if got.get("state") == "SUCCESS" else None

    got = wait_until(result, timeout=90)
    assert got and got["result"] == 15, f"{got}\n{worker.log()[-2000:]}"
