"""The legacy poller as a real ``roast-jobs legacy-worker`` process on a database of its own.

Evaluators come from ``tests.apps.evaluators``; ``calls.log`` in the state folder shows
which process ran which document when, so concurrency and kills are seen from outside.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text

from roast_jobs.db.models import Backend
from roast_jobs.db.session import transaction
from roast_jobs.domain import job_records
from roast_jobs.domain.sample_data import (
    create_agent,
    create_documents,
    create_user,
    ensure_evaluations,
)
from roast_jobs.legacy import repository
from roast_jobs.legacy.worker import APPLICATION_NAME
from tests.apps.evaluators import read_calls
from tests.domain_support import fresh_database
from tests.workers import REPO, wait_until

ROAST_JOBS = REPO / ".venv" / "bin" / "roast-jobs"
TAG = "ROAST_TEST_LEGACY_WORKER_TAG"


# -- the worker process ------------------------------------------------------------------


class Worker:
    """``roast-jobs legacy-worker`` in a subprocess; its children carry ``TAG`` in their
    environment, so leftovers are found even after they were reparented."""

    def __init__(
        self,
        url: str,
        folder: Path,
        evaluator: str,
        max_workers: int,
        shutdown_timeout: float = 2.0,
        **env: str,
    ) -> None:
        self.tag = uuid.uuid4().hex
        self.state = folder / "state"
        self.state.mkdir(exist_ok=True)
        self.log_path = folder / f"worker-{self.tag[:6]}.log"
        self.args = [
            str(ROAST_JOBS),
            "legacy-worker",
            f"--max-workers={max_workers}",
            f"--shutdown-timeout={shutdown_timeout}",
        ]
        self.env = {
            **os.environ,
            "DATABASE_URL": url,
            "ROAST_JOBS_EVALUATOR": f"tests.apps.evaluators:{evaluator}",
            "ROAST_JOBS_LEGACY_POLL_INTERVAL": "0.2",
            "ROAST_JOBS_LEGACY_KILL_GRACE_SECONDS": "1",
            "ROAST_TEST_STATE_DIR": str(self.state),
            # A console script has no cwd on sys.path: the evaluators need the repository.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            TAG: self.tag,
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.stuck = False

    def __enter__(self) -> Worker:
        return self.start().wait_ready()

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self) -> Worker:
        assert self.proc is not None
        proc = self.proc
        up = wait_until(
            lambda: "legacy worker started" in self.log() or proc.poll() is not None, timeout=20
        )
        if not up or proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"the worker did not start:\n{self.log()}")
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        code = self.stop()
        leftovers = self.leftovers()  # none after a clean stop: the worker reaps its children
        for process in leftovers:
            with contextlib.suppress(psutil.Error):
                process.kill()
        if exc_type is None:
            assert not self.stuck, f"no exit within 15 s of SIGTERM:\n{self.log()}"
            assert leftovers == [], f"processes left behind:\n{self.log()}"
            assert code == 0, f"exit code {code}:\n{self.log()}"
        else:
            print(self.log())

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL (and the children) when it does not stop in time."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stuck = True
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        for process in self.leftovers():
            with contextlib.suppress(psutil.Error):
                process.kill()
        self.proc.kill()
        self.proc.wait(timeout=10)

    def children(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this worker (itself included), wherever they were reparented."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get(TAG) == self.tag and alive(process.pid):
                    found.append(process)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def calls(self) -> list[tuple[float, str, int, str]]:
        return read_calls(self.state)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- rows --------------------------------------------------------------------------------


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as database_url:
        yield database_url


def seed(url: str, documents: int) -> list[tuple[str, str]]:
    """(document id, evaluation id) pairs of ``documents`` new documents and one agent."""
    with transaction(url) as session:
        user = create_user(session)
        agent = create_agent(session, user)
        docs = create_documents(session, user, documents)
        evaluations = ensure_evaluations(session, docs, agent)
    return [(doc, evaluations[doc]) for doc in docs]


def add_jobs(url: str, evaluation_ids: list[str]) -> list[str]:
    """PENDING legacy jobs, created in list order 10 ms apart (whatever their ids)."""
    with transaction(url) as session:
        ids = [repository.create(session, evaluation_id) for evaluation_id in evaluation_ids]
        for i, job_id in enumerate(ids):
            session.execute(
                text(
                    'UPDATE "Job" SET "createdAt" = "createdAt" '
                    "- make_interval(secs => :back) WHERE id = :id"
                ),
                {"back": (len(ids) - i) * 0.01, "id": job_id},
            )
    return ids


def jobs(url: str) -> list[dict[str, Any]]:
    with transaction(url) as session:
        rows = session.execute(text('SELECT * FROM "Job" ORDER BY "createdAt", id')).mappings()
        return [dict(row) for row in rows]


def job(url: str, job_id: str) -> dict[str, Any]:
    return next(row for row in jobs(url) if row["id"] == job_id)


def chain(url: str, first_id: str) -> list[dict[str, Any]]:
    return [j for j in jobs(url) if first_id in (j["id"], j["originalJobId"])]


def versions(url: str, evaluation_id: str) -> list[int]:
    with transaction(url) as session:
        rows = session.execute(
            text(
                'SELECT version FROM "EvaluationVersion" WHERE "evaluationId" = :id '
                "ORDER BY version"
            ),
            {"id": evaluation_id},
        )
        return [row[0] for row in rows]


def all_done(url: str) -> bool:
    """No legacy job waits or runs."""
    active = ("PENDING", "RUNNING")
    return not any(j["status"] in active and j["backend"] == "legacy" for j in jobs(url))


def terminate_connections(url: str, application_name: str) -> int:
    with transaction(url) as session:
        rows = session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": application_name},
        )
        return len(rows.all())


def max_overlap(calls: list[tuple[float, str, int, str]]) -> int:
    """The most evaluator calls in progress at one time (an end before a start at a tie)."""
    events = sorted((at, what == "start") for at, _doc, _pid, what in calls)
    running = most = 0
    for _at, is_start in events:
        running += 1 if is_start else -1
        most = max(most, running)
    return most


def started_pid(worker: Worker, document_id: str) -> int | None:
    for _at, doc, pid, what in worker.calls():
        if doc == document_id and what == "start":
            return pid
    return None


def eventually(fn: Any, timeout: float = 10.0) -> Any:
    value = wait_until(fn, timeout=timeout, every=0.1)
    assert value, f"not within {timeout} s"
    return value


# -- tests -------------------------------------------------------------------------------


def beats(url: str) -> int:
    with transaction(url) as s:
        return int(s.execute(text('SELECT count(*) FROM "WorkerHeartbeat"')).scalar_one())


def test_jobs_complete_one_at_a_time_in_fifo_order(url: str, tmp_path: Path) -> None:
    pairs = seed(url, 4)
    evals = [e for _d, e in pairs]
    # d0 twice: its evaluation gets versions 1 and 2.
    order = [evals[2], evals[0], evals[3], evals[1], evals[0]]
    with Worker(url, tmp_path, "LoggingEvaluator", max_workers=1) as worker:
        # The database drops the worker's connections (again, until a poll has met a
        # dropped one: at first the heartbeat's may be the only one): it logs,
        # reconnects, goes on.
        eventually(lambda: beats(url) > 0)

        def poll_meets_a_dropped_connection() -> bool:
            terminate_connections(url, APPLICATION_NAME)
            time.sleep(0.5)  # two polls
            return "failed (retrying every poll)" in worker.log()

        eventually(poll_meets_a_dropped_connection, timeout=20)
        ids = add_jobs(url, order)
        eventually(lambda: all_done(url))
        calls = worker.calls()
        assert "the database answers again" in worker.log()
    rows = {j["id"]: j for j in jobs(url)}
    for job_id in ids:
        row = rows[job_id]
        assert row["status"] == "COMPLETED", row
        assert row["attempts"] == 1 and row["error"] is None
        assert row["evaluationVersionId"]
        assert isinstance(row["durationInSeconds"], int)
        assert row["logs"] and "LoggingEvaluator" in row["logs"]
    assert versions(url, evals[0]) == [1, 2]
    assert all(versions(url, e) == [1] for e in evals[1:])
    # FIFO: claimed (startedAt) in createdAt order, each after the previous one ended.
    started = sorted(ids, key=lambda i: rows[i]["startedAt"])
    assert started == ids
    for before, after in itertools.pairwise(ids):
        assert rows[before]["completedAt"] <= rows[after]["startedAt"]
    doc_of = {e: d for d, e in pairs}
    assert [doc for _t, doc, _p, what in calls if what == "start"] == [doc_of[e] for e in order]
    assert max_overlap(calls) == 1
    assert len({pid for _t, _d, pid, _w in calls}) == len(ids)  # one process per job


def test_concurrency_limit_stale_sweep_and_celery_rows(url: str, tmp_path: Path) -> None:
    pairs = seed(url, 10)
    evals = [e for _d, e in pairs]
    ids = add_jobs(url, evals[:8])
    with transaction(url) as session:
        celery = job_records.new_job(evaluation_id=evals[9], backend=Backend.CELERY)
        session.add(celery)
        session.flush()
        celery_id = celery.id
    with Worker(
        url,
        tmp_path,
        "SlowEvaluator",
        max_workers=3,
        ROAST_TEST_EVAL_SLEEP="1.0",
        ROAST_JOBS_LEGACY_STALE_CHECK_SECONDS="0.5",
    ) as worker:
        # A job whose process vanished half an hour ago; the periodic sweep must find it.
        with transaction(url) as session:
            stale_id = repository.create(session, evals[8])
            session.execute(
                text(
                    'UPDATE "Job" SET status = \'RUNNING\', attempts = 1, "startedAt" = '
                    "CURRENT_TIMESTAMP - interval '31 minutes' WHERE id = :id"
                ),
                {"id": stale_id},
            )
        eventually(lambda: job(url, stale_id)["status"] == "FAILED", timeout=5)
        eventually(lambda: len(chain(url, stale_id)) == 2 and all_done(url), timeout=20)
        time.sleep(0.5)  # a few more polls: the celery row must stay untouched
        calls = worker.calls()
    assert all(job(url, i)["status"] == "COMPLETED" for i in ids)
    assert max_overlap(calls) == 3  # never more than max_workers, and really 3 at once
    assert len({pid for _t, _d, pid, _w in calls}) == 9
    stale, retry = chain(url, stale_id)
    assert stale["error"] == "stale: RUNNING for more than 30 minutes, timed out"
    assert retry["originalJobId"] == stale_id and retry["status"] == "COMPLETED"
    assert retry["attempts"] == 2
    celery_row = job(url, celery_id)
    assert celery_row["status"] == "PENDING" and celery_row["attempts"] == 0
    assert celery_row["startedAt"] is None


def test_time_limit_fails_the_job_at_once_and_kills_the_child(url: str, tmp_path: Path) -> None:
    [(doc, evaluation)] = seed(url, 1)
    [job_id] = add_jobs(url, [evaluation])
    with Worker(
        url,
        tmp_path,
        "SlowEvaluator",
        max_workers=2,
        ROAST_TEST_EVAL_SLEEP="30",
        ROAST_TEST_IGNORE_SIGTERM="1",  # so only the SIGKILL after the grace period works
        ROAST_JOBS_EVALUATION_TIME_LIMIT="1",
        ROAST_JOBS_LEGACY_KILL_GRACE_SECONDS="2",
    ) as worker:
        pid = eventually(lambda: started_pid(worker, doc))
        eventually(lambda: job(url, job_id)["status"] != "RUNNING", timeout=5)
        # FAILED at the SIGTERM, not when the child is finally gone.
        assert alive(pid)
        row = job(url, job_id)
        assert row["status"] == "FAILED", row
        assert row["error"] == "evaluation exceeded its time limit of 1 s"
        assert (row["completedAt"] - row["startedAt"]).total_seconds() < 3
        eventually(lambda: not alive(pid), timeout=4)
        assert worker.children() == []
        time.sleep(0.5)
    assert chain(url, job_id) == [job(url, job_id)]  # a time limit is never retried
    assert versions(url, evaluation) == []


def test_cancel_kill_and_shutdown(url: str, tmp_path: Path) -> None:
    """A cancelled job's child is killed and the job stays CANCELLED; a SIGKILLed child's job
    fails and is retried; SIGTERM kills what outlives the shutdown timeout."""
    (doc_c, eval_c), (doc_k, eval_k), (doc_s, eval_s) = seed(url, 3)
    cancel_id, killed_id = add_jobs(url, [eval_c, eval_k])
    worker = Worker(
        url,
        tmp_path,
        "SlowEvaluator",
        max_workers=2,
        shutdown_timeout=0.5,
        ROAST_TEST_EVAL_SLEEP="2.5",
    )
    with worker:
        cancel_pid = eventually(lambda: started_pid(worker, doc_c))
        killed_pid = eventually(lambda: started_pid(worker, doc_k))
        with transaction(url) as session:
            repository.cancel(session, cancel_id, reason="test")
        os.kill(killed_pid, signal.SIGKILL)

        eventually(lambda: not alive(cancel_pid), timeout=2)  # well before its 2.5 s sleep
        eventually(lambda: job(url, killed_id)["status"] == "FAILED", timeout=2)
        killed = job(url, killed_id)
        assert killed["error"] == (
            "legacy worker process died (exit code -9) while running the job"
        )
        [_, retry] = eventually(lambda: len(chain(url, killed_id)) == 2 and chain(url, killed_id))
        assert retry["originalJobId"] == killed_id
        eventually(lambda: job(url, retry["id"])["status"] == "COMPLETED", timeout=10)
        assert job(url, retry["id"])["attempts"] == 2
        assert versions(url, eval_k) == [1]

        # Shutdown: a job still running after --shutdown-timeout is killed and retried.
        [shut_id] = add_jobs(url, [eval_s])
        shut_pid = eventually(lambda: started_pid(worker, doc_s))
        stopping = time.monotonic()
        assert worker.stop() == 0
        assert time.monotonic() - stopping < 2.3  # did not wait for the 2.5 s run
        assert not alive(shut_pid)

    cancelled = job(url, cancel_id)
    assert cancelled["status"] == "CANCELLED" and cancelled["error"] is None
    assert chain(url, cancel_id) == [cancelled]
    assert versions(url, eval_c) == []
    # A killed child never reaches the end of its call (SIGTERM runs no `finally`).
    ended = {doc for _t, doc, _p, what in worker.calls() if what == "end"}
    assert doc_c not in ended and doc_s not in ended
    shut, shut_retry = chain(url, shut_id)
    assert shut["status"] == "FAILED"
    assert shut["error"] == "legacy worker stopped while running the job (exit code -15)"
    assert shut_retry["status"] == "PENDING" and shut_retry["originalJobId"] == shut_id


FAILURES = {
    "retryable": ("503 service unavailable", "always", ["FAILED", "FAILED", "FAILED"]),
    "permanent": ("invalid input", "always", ["FAILED"]),
    "retry-succeeds": ("503 service unavailable", "1", ["FAILED", "COMPLETED"]),
}


def test_failures_retry_as_new_rows(tmp_path: Path) -> None:
    """Each case has its own database and worker (the failure is set by the environment);
    they run side by side to save the start-up time."""
    with contextlib.ExitStack() as stack:
        cases = []
        for name, (message, times, statuses) in FAILURES.items():
            url = stack.enter_context(fresh_database())
            [(_doc, evaluation)] = seed(url, 1)
            [first] = add_jobs(url, [evaluation])
            folder = tmp_path / name
            folder.mkdir()
            worker = Worker(
                url,
                folder,
                "FailingEvaluator",
                max_workers=2,
                ROAST_TEST_FAIL_MESSAGE=message,
                ROAST_TEST_FAIL_TIMES=times,
            )
            stack.push(worker.start())  # its __exit__ stops it and checks for leftovers
            cases.append((url, evaluation, first, message, statuses, worker))
        for *_, worker in cases:
            worker.wait_ready()
        for url, _evaluation, first, _message, statuses, _worker in cases:
            eventually(lambda: len(chain(url, first)) == len(statuses) and all_done(url))  # noqa: B023
        time.sleep(0.6)  # a few more polls: no further retry row
        for url, evaluation, first, message, statuses, _worker in cases:
            rows = chain(url, first)
            assert [r["status"] for r in rows] == statuses
            assert [r["attempts"] for r in rows] == list(range(1, len(statuses) + 1))
            assert [r["originalJobId"] for r in rows] == [None] + [first] * (len(statuses) - 1)
            for row in rows:
                if row["status"] == "FAILED":
                    assert row["error"] == message and message in row["logs"]
            assert versions(url, evaluation) == ([1] if statuses[-1] == "COMPLETED" else [])
