"""Evaluators for worker tests, loaded with ``ROAST_JOBS_EVALUATOR=tests.apps.evaluators:Name``
(the worker needs the repository root as its cwd or on PYTHONPATH).

Environment:

- ``ROAST_TEST_STATE_DIR``: when set, every call appends ``"<time.time()> <document_id> <pid>
  <start|end>"`` to ``calls.log`` there (one write per line), so a test can see overlap and
  timing across processes; ``FailingEvaluator`` keeps its per-document counters there too.
- ``ROAST_TEST_EVAL_SLEEP``: seconds ``SlowEvaluator`` sleeps before evaluating.
- ``ROAST_TEST_IGNORE_SIGTERM=1``: ``SlowEvaluator`` ignores SIGTERM (only SIGKILL stops it).
- ``ROAST_TEST_FAIL_MESSAGE``: the ``RuntimeError`` message of ``FailingEvaluator`` (its
  words decide whether the job is retried, e.g. "503 service unavailable", "invalid input").
- ``ROAST_TEST_FAIL_TIMES``: how many calls per document fail first ("always" by default).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from roast_jobs.domain.evaluator import AgentInput, DocumentInput, EvaluationOutput
from roast_jobs.domain.offline_evaluator import OfflineEvaluator

CALLS_LOG = "calls.log"


def state_dir() -> Path | None:
    value = os.environ.get("ROAST_TEST_STATE_DIR")
    return Path(value) if value else None


def _append(line: str) -> None:
    folder = state_dir()
    if folder is None:
        return
    fd = os.open(folder / CALLS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines from processes never mix
    finally:
        os.close(fd)


@contextmanager
def logged_call(document: DocumentInput) -> Iterator[None]:
    _append(f"{time.time()} {document.document_id} {os.getpid()} start")
    try:
        yield
    finally:
        _append(f"{time.time()} {document.document_id} {os.getpid()} end")


def read_calls(folder: Path) -> list[tuple[float, str, int, str]]:
    """``calls.log`` as (time, document_id, pid, "start"|"end") tuples, in file order."""
    path = folder / CALLS_LOG
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        at, document_id, pid, what = line.split()
        rows.append((float(at), document_id, int(pid), what))
    return rows


def next_call_number(document_id: str) -> int:
    """This call's number for ``document_id`` (1, 2, ...), counted across processes: the
    first ``<document_id>.<n>`` file that O_EXCL lets us create."""
    folder = state_dir()
    if folder is None:
        raise RuntimeError("ROAST_TEST_STATE_DIR must be set to count calls")
    n = 1
    while True:
        try:
            os.close(os.open(folder / f"{document_id}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            n += 1
            continue
        return n


class LoggingEvaluator:
    """The offline evaluator, with each call in ``calls.log``."""

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        with logged_call(document):
            return OfflineEvaluator().evaluate(document, agent)


class SlowEvaluator:
    """Sleeps ``ROAST_TEST_EVAL_SLEEP`` seconds, then evaluates offline."""

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        if os.environ.get("ROAST_TEST_IGNORE_SIGTERM") == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with logged_call(document):
            time.sleep(float(os.environ.get("ROAST_TEST_EVAL_SLEEP", "1")))
            return OfflineEvaluator().evaluate(document, agent)


class FailingEvaluator:
    """Raises ``RuntimeError(ROAST_TEST_FAIL_MESSAGE)`` on the first ``ROAST_TEST_FAIL_TIMES``
    calls per document (every call when "always"), then evaluates offline."""

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        with logged_call(document):
            times = os.environ.get("ROAST_TEST_FAIL_TIMES", "always")
            message = os.environ.get("ROAST_TEST_FAIL_MESSAGE", "503 service unavailable")
            if times == "always" or next_call_number(document.document_id) <= int(times):
                raise RuntimeError(message)
            return OfflineEvaluator().evaluate(document, agent)


class CountingEvaluator:
    """A fast evaluator for load tests: one ``calls.log`` line per run, its evaluation named
    "<document_id>/<agent_id>" (one job per evaluation makes it the job's identity), a
    sleep of ``ROAST_TEST_EVAL_SLEEP`` (default 0) and a fixed small output."""

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        _append(f"{time.time()} {document.document_id}/{agent.agent_id} {os.getpid()} start")
        time.sleep(float(os.environ.get("ROAST_TEST_EVAL_SLEEP", "0")))
        return EvaluationOutput(grade=50, summary="counted", analysis="counted")
