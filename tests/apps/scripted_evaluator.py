"""An evaluator that takes orders from the document's title, so one worker serves every
test: ``"fail 2: 503 service unavailable"`` fails the first 2 runs of each document with
that message (``fail always: ...`` every run), ``"sleep 3"`` sleeps 3 s first, and
``"fail 1 on release: ..."`` fails the first run once the file ``release-<document id>``
appears in the state folder. Anything else is evaluated by the offline evaluator.

Runs are counted across processes with files in ``$ROAST_TEST_STATE_DIR``; each run
appends "<time> <document id> <pid> <event>" to ``calls.log`` there.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from roast_jobs.domain.evaluator import AgentInput, DocumentInput, EvaluationOutput
from roast_jobs.domain.offline_evaluator import OfflineEvaluator

_FAIL = re.compile(r"^fail (\d+|always)( on release)?: (.+)$")
_SLEEP = re.compile(r"^sleep (\d+(?:\.\d+)?)$")


def _state_dir() -> Path | None:
    folder = os.environ.get("ROAST_TEST_STATE_DIR")
    return Path(folder) if folder else None


def _log(document_id: str, event: str) -> None:
    folder = _state_dir()
    if folder is None:
        return
    with open(folder / "calls.log", "a") as f:
        f.write(f"{time.time():.4f} {document_id} {os.getpid()} {event}\n")


def _run_number(document_id: str) -> int:
    """1 for the document's first run, 2 for its second, ... (atomic across processes)."""
    folder = _state_dir()
    assert folder is not None, "ROAST_TEST_STATE_DIR is not set"
    n = 1
    while True:
        try:
            fd = os.open(folder / f"run-{document_id}-{n}", os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            n += 1
            continue
        os.close(fd)
        return n


def _wait_for_release(document_id: str) -> None:
    folder = _state_dir()
    assert folder is not None, "ROAST_TEST_STATE_DIR is not set"
    while not (folder / f"release-{document_id}").exists():
        time.sleep(0.05)


class ScriptedEvaluator:
    def __init__(self) -> None:
        self.inner = OfflineEvaluator()

    def evaluate(self, document: DocumentInput, agent: AgentInput) -> EvaluationOutput:
        _log(document.document_id, "start")
        try:
            title = document.title.strip()
            if m := _SLEEP.match(title):
                time.sleep(float(m.group(1)))
            elif m := _FAIL.match(title):
                run = _run_number(document.document_id)
                if m.group(1) == "always" or run <= int(m.group(1)):
                    if m.group(2):
                        _wait_for_release(document.document_id)
                    raise RuntimeError(m.group(3))
            return self.inner.evaluate(document, agent)
        finally:
            _log(document.document_id, "end")


def calls(folder: Path) -> list[tuple[float, str, int, str]]:
    path = folder / "calls.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        when, doc, pid, event = line.split()
        out.append((float(when), doc, int(pid), event))
    return out
