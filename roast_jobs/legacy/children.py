"""One OS process per legacy job: what runs in it, and how the parent tracks and kills it.

The parent claims the job before it forks, so it always knows which job a child runs (the
legacy poller claimed in the child and could not tell which job a killed child had held).
Each child leads its own process group: a kill reaches whatever the evaluator started, and
Ctrl-C in a terminal reaches only the parent, which decides what happens to the children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from multiprocessing.process import BaseProcess

from sqlalchemy import Engine

log = logging.getLogger("roast_jobs.legacy")

#: Exit codes of a child. Any other code (or a signal) means it died mid-run.
EXIT_COMPLETED = 0
EXIT_FAILED = 1  # the evaluation failed and the child recorded it (repository.fail)
EXIT_CRASHED = 2  # something else went wrong; the job may still be RUNNING


def child_main(
    url: str, job_id: str, parent_engine: Engine | None, attempt: int | None = None
) -> None:
    """The child's body: run one RUNNING job, record a failure, exit 0/1/2. Everything
    it logs carries the job's fields (roast_jobs.logs)."""
    from roast_jobs.logs import job_context

    with job_context(job_id, "evaluation", "legacy", attempt):
        _run_child(url, job_id, parent_engine)


def _run_child(url: str, job_id: str, parent_engine: Engine | None) -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler was inherited
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_engine is not None:
        parent_engine.dispose(close=False)  # its sockets are the parent's, never ours
    log.info("job %s running in pid %d", job_id, os.getpid())

    from roast_jobs.db.session import transaction
    from roast_jobs.domain.evaluator import load_evaluator
    from roast_jobs.domain.runner import EvaluationFailed, run_evaluation

    from . import repository

    try:
        try:
            run_evaluation(job_id, load_evaluator(), partial(transaction, url))
        except EvaluationFailed as exc:
            with transaction(url) as session:
                retry_id = repository.fail(
                    session, job_id, str(exc), retryable=exc.retryable, logs=exc.logs
                )
            then = f"retry as job {retry_id}" if retry_id else "no retry"
            log.info("job %s failed: %s (%s)", job_id, str(exc)[:200], then)
            code = EXIT_FAILED
        else:
            code = EXIT_COMPLETED
    except BaseException:
        log.exception("job %s: the worker process crashed", job_id)
        code = EXIT_CRASHED
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip atexit and finalizers inherited from the parent


@dataclass
class Child:
    """A running child process and what the parent knows of its job."""

    job_id: str
    process: BaseProcess
    attempt: int
    time_limit: float
    started: float  # time.monotonic() at claim
    kill_reason: str | None = None  # time limit | cancelled | ended elsewhere | shutdown
    term_sent: float | None = None
    kill_sent: bool = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def over_time_limit(self) -> bool:
        return self.kill_reason is None and self.elapsed() > self.time_limit

    def terminate(self, reason: str) -> None:
        """SIGTERM the child's group once; ``escalate`` follows with SIGKILL."""
        if self.term_sent is not None:
            return
        self.kill_reason = self.kill_reason or reason
        self.term_sent = time.monotonic()
        signal_group(self.pid, signal.SIGTERM)

    def escalate(self, grace: float) -> None:
        if self.term_sent is None or self.kill_sent:
            return
        if time.monotonic() - self.term_sent >= grace:
            self.kill_sent = True
            signal_group(self.pid, signal.SIGKILL)


def signal_group(pid: int, sig: int) -> None:
    """Signal the child's process group, or the child alone before it made its group."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
