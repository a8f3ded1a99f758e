"""``roast-jobs demo``: a real worker, a few hundred tasks, their waits and a summary.

The demo sends tasks with mixed priorities (0-9) and countdowns to one ``celery worker``
subprocess (prefork, 2 children) on the PostgreSQL broker, prints each task as it
finishes and sums up what it saw. It reads results through Celery's result backend,
several per query, so watching does not load the database much.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery, states
from sqlalchemy import select

from roast_jobs.config import child_env

Echo = Callable[[str], None]
POLL_SECONDS = 0.2
#: A delayed task that starts this soon after its due time ran on time.
ON_TIME = 0.1


class DemoError(RuntimeError):
    """The demo could not run; the message says why."""


@dataclass
class Sent:
    """One task as the demo sent it, and what came back."""

    id: str
    priority: int
    delay: int
    sent_at: float
    status: str = states.PENDING
    started_at: float | None = None
    score: float | None = None

    @property
    def due(self) -> float:
        return self.sent_at + self.delay

    @property
    def wait(self) -> float:
        """From queued (or due, when delayed) to started, in seconds."""
        assert self.started_at is not None
        return self.started_at - self.due


@dataclass
class Plan:
    """Priorities and countdowns of the tasks to send; a seed makes it repeatable."""

    priorities: list[int]
    delays: list[int]

    @classmethod
    def make(cls, tasks: int, seed: int | None, delayed_share: float = 0.3) -> Plan:
        rng = random.Random(seed)
        priorities = [rng.randint(0, 9) for _ in range(tasks)]
        delays = [rng.randint(1, 5) if rng.random() < delayed_share else 0 for _ in range(tasks)]
        return cls(priorities, delays)


@dataclass
class DemoWorker:
    """``celery -A roast_jobs.tasks.demo worker -P prefork -c 2`` in its own process group."""

    database_url: str
    concurrency: int = 2
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=lambda: Path(_tempfile("roast-jobs-demo-", ".log")))

    def start(self, timeout: float = 60) -> None:
        hostname = f"demo-{os.getpid()}@{socket.gethostname()}"
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "roast_jobs.tasks.demo",
            "worker",
            "-n",
            hostname,
            "-P",
            "prefork",
            "-c",
            str(self.concurrency),
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=child_env(DATABASE_URL=self.database_url),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while f"{hostname} ready." not in self.log():
            if self.proc.poll() is not None:
                raise DemoError(f"the worker exited at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the worker was not ready within {timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (running tasks finish), then kill whatever is left of the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):  # main process or a pool child left
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def remove_log(self) -> None:
        self.log_path.unlink(missing_ok=True)


def _tempfile(prefix: str, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    os.close(fd)
    return path


class ResultWatcher:
    """Finds which of the sent tasks are done, many per query of the result table."""

    def __init__(self, app: Celery) -> None:
        self.backend = app.backend
        # The first session creates the result tables, before the worker races to do it.
        self.backend.ResultSession().close()
        self.table = self.backend.task_cls.__table__

    def finished(self, ids: list[str], chunk: int = 500) -> dict[str, tuple[str, Any]]:
        """{task id: (state, result)} of the ids that reached a ready state."""
        done: dict[str, tuple[str, Any]] = {}
        session = self.backend.ResultSession()
        c = self.table.c
        try:
            for start in range(0, len(ids), chunk):
                query = select(c.task_id, c.status, c.result).where(
                    c.task_id.in_(ids[start : start + chunk]),
                    c.status.in_(sorted(states.READY_STATES)),
                )
                for task_id, status, raw in session.execute(query):
                    result = self.backend.decode(raw) if raw is not None else None
                    done[task_id] = (status, result)
        finally:
            session.close()
        return done


def run(
    app: Celery,
    database_url: str,
    tasks: int,
    seed: int | None,
    timeout: float,
    quiet: bool,
    echo: Echo,
) -> bool:
    """Run the demo on ``app``'s broker; True when every task finished successfully."""
    from roast_jobs.tasks.demo import evaluate_document

    plan = Plan.make(tasks, seed)
    with app.connection_for_write() as conn:
        conn.connect()  # creates the broker schema if needed
    app.control.purge()  # tasks left in the demo queue by an interrupted run
    watcher = ResultWatcher(app)

    worker = DemoWorker(database_url)
    echo("starting a worker: celery -A roast_jobs.tasks.demo worker -P prefork -c 2")
    ok = False
    try:
        worker.start()
        echo(
            f"worker ready; sending {tasks} tasks "
            f"({sum(1 for d in plan.delays if d)} with a 1-5 s countdown)"
        )
        sent = _send(evaluate_document, plan)
        t0 = sent[0].sent_at
        echo(f"sent {tasks} tasks in {time.time() - t0:.2f}s; finishing:")
        _watch(sent, watcher, worker, t0, timeout, quiet, echo)
        ok = _summary(sent, t0, echo)
    finally:
        worker.stop()
        if ok:
            worker.remove_log()
        else:
            echo(f"worker log: {worker.log_path}")
    return ok


def _send(task: Any, plan: Plan) -> list[Sent]:
    sent: list[Sent] = []
    for i, (priority, delay) in enumerate(zip(plan.priorities, plan.delays, strict=True)):
        at = time.time()
        result = task.apply_async((f"doc-{i:04d}",), priority=priority, countdown=delay or None)
        sent.append(Sent(result.id, priority, delay, at))
    return sent


def _watch(
    sent: list[Sent],
    watcher: ResultWatcher,
    worker: DemoWorker,
    t0: float,
    timeout: float,
    quiet: bool,
    echo: Echo,
) -> None:
    """Poll until every task is done, the timeout passes or the worker dies."""
    by_id = {s.id: s for s in sent}
    pending = set(by_id)
    deadline = max(s.due for s in sent) + timeout
    while pending and time.time() < deadline:
        if not worker.alive():
            echo(f"the worker died:\n{worker.log_tail()}")
            break
        done = watcher.finished(sorted(pending))
        batch: list[Sent] = []
        for task_id, (status, result) in done.items():
            s = by_id[task_id]
            s.status = status
            if status == states.SUCCESS and isinstance(result, dict):
                s.started_at = result.get("started_at")
                s.score = result.get("score")
            pending.discard(task_id)
            batch.append(s)
        batch.sort(key=lambda s: s.started_at or 0.0)
        if quiet and batch:
            echo(f"  +{time.time() - t0:6.2f}s  {len(sent) - len(pending)}/{len(sent)} finished")
        elif not quiet:
            for s in batch:
                echo(_line(s, t0))
        if pending:
            time.sleep(POLL_SECONDS)


def _line(s: Sent, t0: float) -> str:
    if s.started_at is None:
        return f"  {s.id[:8]}  p{s.priority}  delay {s.delay}s  {s.status}"
    return (
        f"  +{s.started_at - t0:6.2f}s  {s.id[:8]}  p{s.priority}  delay {s.delay}s  "
        f"wait {s.wait * 1000:6.0f} ms  score {s.score:.2f}"
    )


def _summary(sent: list[Sent], t0: float, echo: Echo) -> bool:
    ok = [s for s in sent if s.status == states.SUCCESS and s.started_at is not None]
    failed = [s for s in sent if s.status in states.PROPAGATE_STATES]
    unfinished = [s for s in sent if s.status not in states.READY_STATES]
    echo("")
    echo("summary")
    echo(f"  finished      {len(ok)}/{len(sent)} tasks in {time.time() - t0:.2f}s")
    if ok:
        echo("  mean wait by priority, queued (or due) -> started; 9 is served first:")
        for priority in range(9, -1, -1):
            waits = [s.wait for s in ok if s.priority == priority]
            if waits:
                mean_ms = statistics.mean(waits) * 1000
                echo(f"    p{priority}  {len(waits):4d} tasks  {mean_ms:7.0f} ms")
        _delayed_summary([s for s in ok if s.delay], ok, echo)
    if failed:
        echo(f"  failed        {len(failed)}: {', '.join(s.id for s in failed[:10])}")
    if unfinished:
        echo(f"  unfinished    {len(unfinished)}: {', '.join(s.id for s in unfinished[:10])}")
    good = len(ok) == len(sent)
    echo(
        f"all {len(sent)} tasks finished"
        if good
        else f"FAILED: {len(sent) - len(ok)} of {len(sent)} tasks did not finish"
    )
    return good


def _delayed_summary(delayed: list[Sent], ok: list[Sent], echo: Echo) -> None:
    """How close to their due time delayed tasks started, and why the late ones were late."""
    if not delayed:
        return
    on_time = [d for d in delayed if d.wait <= ON_TIME]
    late = [d for d in delayed if d.wait > ON_TIME]
    # Late for a good reason: a task of equal or higher priority started while it was due.
    behind = [
        d
        for d in late
        if any(
            o is not d and o.priority >= d.priority and d.due <= (o.started_at or 0) <= d.started_at
            for o in ok
        )
    ]
    unexplained = [d for d in late if d not in behind]
    median = statistics.median(d.wait for d in delayed) * 1000
    echo(
        f"  delayed       {len(delayed)} tasks with 1-5 s countdowns, median {median:.0f} ms "
        f"after due; {len(on_time)} within {ON_TIME * 1000:.0f} ms"
    )
    if behind:
        worst = max(d.wait for d in behind) * 1000
        echo(
            f"                {len(behind)} waited behind tasks of equal or higher priority "
            f"(up to {worst:.0f} ms)"
        )
    if unexplained:
        worst = max(d.wait for d in unexplained) * 1000
        echo(
            f"                {len(unexplained)} started late with no such backlog "
            f"(up to {worst:.0f} ms)"
        )
