"""Redriving dead letters whose singleton key is taken: what can go goes, the rest is held
back with why, and the statement never fails whole."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import psycopg

from roast_jobs.jobs import DeadLetters, JobManager, JobState, enqueue_in
from tests.apps.jobs_app import job_record, job_reject
from tests.conftest import DATABASE_URL
from tests.jobs_support import jm, new_queue, runs, wait_until, worker_fixture
from tests.workers import REPO, CeleryWorker

__all__ = ["jm"]

REPEATED, LIVE, RACE, CLI = (new_queue(f"redrive-{n}") for n in ("rep", "live", "race", "cli"))

worker = worker_fixture("redrive", ",".join((REPEATED, LIVE, RACE, CLI)))


def bury(jm: JobManager, queue: str, key: str | None) -> tuple[str, str, int]:
    """A job with ``key`` rejected into the dead letters: (job id, label, dead letter id)."""
    name = uuid.uuid4().hex
    job_id = jm.send(job_reject, {"label": name}, queue=queue, singleton_key=key)
    assert wait_until(lambda: jm.get_job(job_id).state is JobState.DEAD_LETTER)
    [dead_id] = [d.id for d in DeadLetters(jm.link).list(queue=queue) if d.task_id == job_id]
    return job_id, name, dead_id


def test_redrive_all_moves_one_letter_per_key_and_holds_back_the_rest(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key = uuid.uuid4().hex
    first, first_name, first_dead = bury(jm, REPEATED, key)
    second, second_name, second_dead = bury(jm, REPEATED, key)
    plain, plain_name, _ = bury(jm, REPEATED, None)  # no key: always goes
    letters = DeadLetters(jm.link)
    result = letters.redrive(all=True, queue=REPEATED)
    assert sorted(task_id for _id, _queue, task_id in result) == sorted([first, plain])
    [held] = result.held
    assert (held.dead_id, held.task_id, held.singleton_key) == (second_dead, second, key)
    assert str(first_dead) in held.reason and "same singleton key" in held.reason
    # The moved ones ran again (and were rejected again); the held one did not move.
    assert wait_until(lambda: runs(first_name) == 2 and runs(plain_name) == 2)
    assert letters.get(second_dead).task_id == second and runs(second_name) == 1


def test_redrive_holds_back_a_letter_whose_key_a_live_job_holds(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key = uuid.uuid4().hex
    job_id, _name, dead_id = bury(jm, LIVE, key)
    live = jm.send(job_record, {"label": "live"}, queue=LIVE, singleton_key=key, countdown=600)
    result = DeadLetters(jm.link).redrive([dead_id])
    assert list(result) == []
    [held] = result.held
    assert (held.dead_id, held.task_id, held.holder) == (dead_id, job_id, live)
    assert live in held.reason
    jm.cancel_job(live)


def test_redrive_racing_a_sender_for_the_key_holds_back_instead_of_failing(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key = uuid.uuid4().hex
    _job_id, _name, dead_id = bury(jm, RACE, key)
    out: dict[str, Any] = {}

    def redrive() -> None:
        try:
            out["result"] = DeadLetters(jm.link).redrive([dead_id])
        except Exception as exc:
            out["error"] = exc

    with psycopg.connect(DATABASE_URL) as sender:
        # A sender takes the key in a transaction still open when the redrive runs: the
        # redrive saw the key free and must wait for the sender to decide.
        with enqueue_in(sender):
            job_record.apply_async(("race",), queue=RACE, singleton_key=key, countdown=600)
        pid = sender.info.backend_pid
        thread = threading.Thread(target=redrive)
        thread.start()
        with psycopg.connect(DATABASE_URL, autocommit=True) as watch:
            blocked = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
            assert wait_until(lambda: watch.execute(blocked, (pid,)).fetchone()[0] > 0)
        sender.commit()
    thread.join(60)
    assert "error" not in out, out.get("error")
    assert list(out["result"]) == []
    assert [h.dead_id for h in out["result"].held] == [dead_id]
    assert DeadLetters(jm.link).get(dead_id)


def test_cli_redrive_prints_what_moved_and_what_was_held_back(
    jm: JobManager, worker: CeleryWorker
) -> None:
    key = uuid.uuid4().hex
    first, _first_name, first_dead = bury(jm, CLI, key)
    second, _second_name, second_dead = bury(jm, CLI, key)
    proc = subprocess.run(
        [sys.executable, "-m", "roast_jobs.cli", "dead", "redrive", "--all", "-Q", CLI],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"(task {first})" in proc.stdout
    held = [line for line in proc.stdout.splitlines() if f"dead letter {second_dead}" in line]
    assert len(held) == 1 and "held back" in held[0] and f"(task {second})" in held[0]
    assert str(first_dead) in held[0]
    assert "1 redriven, 1 held back" in proc.stdout
