"""Celery end to end: real ``celery worker`` subprocesses and the real CLI on the broker.

Tasks come from tests/apps/worker_app.py and record every run in a table, so runs are
counted across processes. Waits are generous and never asserted on: a test waits for an
outcome (retrying ``celery inspect``/``control`` until every worker replied) and asserts
the outcome and the order of events. The only durations asserted are lower bounds (a
retry or an ETA task never runs before it is due), which a slow machine cannot break.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest
from celery import chain, chord, group
from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult

from roast_jobs.config import Settings
from roast_jobs.tasks.app import make_celery
from tests.apps import worker_app
from tests.apps.worker_app import (
    RUNS,
    add,
    boom,
    hold,
    mark,
    retry_countdown,
    sleepy,
    soft_limited,
    tsum,
)
from tests.conftest import BROKER_SCHEMA, DATABASE_URL, RESULT_SCHEMA
from tests.workers import REPO, CeleryWorker, wait_until

APP = "tests.apps.worker_app"
RESULT_TIMEOUT = 90.0  # seconds; waiting only, never asserted on
T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------


def celery_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``celery -A tests.apps.worker_app ...`` command line."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP, *args],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def replies_from(hosts: set[str], *args: str, timeout: float = 90.0) -> dict[str, Any]:
    """``celery inspect|control ARGS --json``, repeated until every one of ``hosts`` replied;
    the replies, keyed by worker hostname.

    ``celery inspect|control`` waits 1 s for replies: on a loaded machine a reply can come
    later, so a missing reply means "ask again", not a failure (every command used here is
    idempotent). Fails only when some host never replies within ``timeout``.
    """
    last: list[str] = []

    def complete() -> dict[str, Any] | None:
        cp = celery_cli(*args, "--json")
        last[:] = [f"rc={cp.returncode}", cp.stdout[-2000:], cp.stderr[-2000:]]
        if cp.returncode != 0:  # no reply at all within the window
            return None
        try:
            replies = json.loads(cp.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        if isinstance(replies, list):  # control: one {host: reply} per reply
            replies = {h: v for one in replies for h, v in one.items()}
        return replies if hosts <= set(replies) else None

    replies = wait_until(complete, timeout=timeout, every=0.5)
    assert replies, f"{args}: no reply from every one of {sorted(hosts)}\n" + "\n".join(last)
    return replies


@contextlib.contextmanager
def captured_events() -> Iterator[list[dict[str, Any]]]:
    """Every event the workers send while the block runs, seen by an independent receiver."""
    app = worker_app.app
    seen: list[dict[str, Any]] = []
    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(
            target=recv.capture, kwargs={"limit": None, "timeout": None, "wakeup": False}
        )
        thread.start()
        try:
            # Bound to the topic exchange in the database: from now on no event is lost,
            # whether or not the receiving thread is already draining.
            bound = wait_until(
                lambda: query(
                    f'SELECT 1 FROM "{BROKER_SCHEMA}".binding WHERE queue = %s',
                    recv.queue.name,
                ),
                timeout=30,
            )
            assert bound
            yield seen
        finally:
            recv.should_stop = True
            thread.join(timeout=30)
    assert not thread.is_alive()


def events_of(seen: list[dict[str, Any]], task_id: str) -> dict[str, dict[str, Any]]:
    """The last event of each type for one task."""
    return {e["type"]: e for e in list(seen) if e.get("uuid") == task_id}


def query(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as c:
        return c.execute(sql, params).fetchall()  # type: ignore[arg-type]


def runs(task_id: str) -> list[tuple[str, str, datetime]]:
    """(name, value, start time) of every recorded run of a task, oldest first."""
    rows = query(f"SELECT name, value, at FROM {RUNS} WHERE task_id = %s ORDER BY at", task_id)
    return [(r[0], r[1], r[2]) for r in rows]


def broker_rows(task_id: str) -> int:
    """Messages of this task still in the broker (an ack deletes the row)."""
    sql = f'SELECT count(*) FROM "{BROKER_SCHEMA}".message WHERE task_id = %s'
    return int(query(sql, task_id)[0][0])


def logs(*workers: CeleryWorker) -> str:
    return "\n".join(f"--- {w.name} ---\n{w.log()[-3000:]}" for w in workers)


def start_all(*workers: CeleryWorker) -> None:
    """Start workers in parallel and wait until every one is ready."""
    for w in workers:
        w.start(wait=False)
    for w in workers:
        w.wait_ready(timeout=120)


@pytest.fixture(scope="module", autouse=True)
def _runs_table() -> None:
    worker_app.ensure_runs_table()


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[CeleryWorker, CeleryWorker]]:
    """Two workers on the default queue, sending events (-E)."""
    pair = (CeleryWorker("cw1", args=["-E"]), CeleryWorker("cw2", args=["-E"]))
    try:
        start_all(*pair)
        yield pair
    finally:
        for w in pair:
            w.stop()


@pytest.fixture
def queue() -> str:
    """A queue of its own, so that only the test's own worker consumes it."""
    return f"q-{uuid.uuid4().hex[:10]}"


# -- results, canvas -----------------------------------------------------------------


def test_round_trip_result_in_database_backend(workers: tuple[CeleryWorker, ...]) -> None:
    r = add.delay(2, 3)
    assert r.get(timeout=RESULT_TIMEOUT) == 5
    assert r.state == "SUCCESS"
    # Stored by Celery's database backend, in the result schema, by one of our workers.
    rows = query(
        f'SELECT status, name, worker FROM "{RESULT_SCHEMA}".celery_taskmeta WHERE task_id = %s',
        r.id,
    )
    assert rows and rows[0][:2] == ("SUCCESS", "tests.apps.worker_app.add")
    assert rows[0][2] in {w.hostname for w in workers}
    wait_until(lambda: broker_rows(r.id) == 0, timeout=30)
    assert broker_rows(r.id) == 0, "the task was not acked"


def test_chain(workers: tuple[CeleryWorker, ...]) -> None:
    r = chain(add.s(1, 2), add.s(10), add.s(100)).delay()
    assert r.get(timeout=RESULT_TIMEOUT) == 113
    assert r.parent is not None and r.parent.get(timeout=RESULT_TIMEOUT) == 13


def test_group(workers: tuple[CeleryWorker, ...]) -> None:
    r = group(add.s(i, i) for i in range(8)).delay()
    assert r.get(timeout=RESULT_TIMEOUT) == [2 * i for i in range(8)]
    # Every part has its own SUCCESS row, stored by one of our workers.
    ids = [c.id for c in r.results]
    rows = query(
        f'SELECT task_id, status, worker FROM "{RESULT_SCHEMA}".celery_taskmeta '
        "WHERE task_id = ANY(%s)",
        ids,
    )
    assert sorted(row[0] for row in rows) == sorted(ids), rows
    assert {row[1] for row in rows} == {"SUCCESS"}, rows
    assert {row[2] for row in rows} <= {w.hostname for w in workers}, rows


def test_chord_body_runs_after_its_header_via_chord_unlock(
    workers: tuple[CeleryWorker, ...],
) -> None:
    # The database backend has no native chords: celery.chord_unlock polls (countdown 1 s
    # retries, delayed messages in the broker) until the header is ready, then sends the
    # body from inside its own run.
    with captured_events() as seen:
        r = chord((add.s(i, i) for i in range(5)), tsum.s()).delay()
        assert r.get(timeout=RESULT_TIMEOUT) == 20
        assert r.state == "SUCCESS"
        header = r.parent
        assert header is not None and len(header.results) == 5
        header_ids = [c.id for c in header.results]

        # The chord_unlock of this chord: its arguments name the header's group id.
        def unlock_id() -> str | None:
            for e in list(seen):
                if (
                    e["type"] == "task-received"
                    and e.get("name") == "celery.chord_unlock"
                    and header.id in str(e.get("args"))
                ):
                    return str(e["uuid"])
            return None

        unlock = wait_until(unlock_id, timeout=60)
        assert unlock, f"no celery.chord_unlock for group {header.id} was received"
        want = {"task-received", "task-started", "task-succeeded"}
        unlocked = wait_until(lambda: want <= set(events_of(seen, unlock)), timeout=60)
        assert unlocked, events_of(seen, unlock)
        assert wait_until(lambda: want <= set(events_of(seen, r.id)), timeout=60)
        # The body was sent by that chord_unlock run: its parent is the unlock task.
        assert events_of(seen, r.id)["task-received"]["parent_id"] == unlock
    assert any(f"Task celery.chord_unlock[{unlock}] succeeded" in w.log() for w in workers)
    # And it started only after every header task had stored its result (one host clock).
    rows = query(
        f'SELECT task_id, status, date_done::timestamptz, date_started FROM "{RESULT_SCHEMA}"'
        ".celery_taskmeta WHERE task_id = ANY(%s)",
        [*header_ids, r.id],
    )
    by_id = {row[0]: row[1:] for row in rows}
    assert set(by_id) == {*header_ids, r.id}, rows
    assert all(by_id[t][0] == "SUCCESS" for t in by_id), rows
    body_started = by_id[r.id][2]
    assert body_started is not None, rows
    assert max(by_id[t][1] for t in header_ids) < body_started, rows


# -- retries and failures ------------------------------------------------------------


def test_retry_with_countdown_runs_again_and_succeeds(
    workers: tuple[CeleryWorker, ...],
) -> None:
    r = retry_countdown.delay("rc", times=2, countdown=1.0)
    assert r.get(timeout=RESULT_TIMEOUT) == "rc:done after 2 retries"
    got = runs(r.id)
    assert [(n, v) for n, v, _ in got] == [
        ("retry_countdown", "rc:0"),
        ("retry_countdown", "rc:1"),
        ("retry_countdown", "rc:2"),
    ]
    # A lower bound only (noise can only make it later): each retry waited its countdown.
    for (_, _, before), (_, _, after) in itertools.pairwise(got):
        assert (after - before).total_seconds() >= 0.9


def test_failing_task_ends_failure_with_error(workers: tuple[CeleryWorker, ...]) -> None:
    r = boom.delay()
    with pytest.raises(ValueError, match="boom"):
        r.get(timeout=RESULT_TIMEOUT)
    assert r.state == "FAILURE"
    assert isinstance(r.result, ValueError)
    assert r.traceback and "ValueError: boom" in r.traceback
    wait_until(lambda: broker_rows(r.id) == 0, timeout=30)
    assert broker_rows(r.id) == 0, "a failed task must be acked, not redelivered"


# -- time limits ---------------------------------------------------------------------


def test_soft_time_limit_interrupts_the_task(workers: tuple[CeleryWorker, ...]) -> None:
    r = soft_limited.apply_async((120, "soft"), soft_time_limit=1)
    assert r.get(timeout=RESULT_TIMEOUT) == "soft limit"
    assert [n for n, _, _ in runs(r.id)] == ["soft-start", "soft-limit"]


def test_hard_time_limit_kills_the_task_and_the_worker_goes_on(
    workers: tuple[CeleryWorker, ...],
) -> None:
    r = sleepy.apply_async((120, "hard"), time_limit=2)
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=RESULT_TIMEOUT)
    assert r.state == "FAILURE"
    # The worker keeps serving.
    assert add.delay(20, 22).get(timeout=RESULT_TIMEOUT) == 42
    assert all(w.proc is not None and w.proc.poll() is None for w in workers)
    # Settled in the broker (acked, not handed back), so it never runs again.
    assert wait_until(lambda: broker_rows(r.id) == 0, timeout=30), logs(*workers)
    assert [n for n, _, _ in runs(r.id)] == ["sleepy-start"]


# -- remote control through the real CLI ---------------------------------------------


def test_inspect_ping_reaches_both_workers(workers: tuple[CeleryWorker, ...]) -> None:
    # The CLI's default 1 s reply window is a wait, not the check: ask again until both
    # workers have answered in one reply round.
    def both_pong() -> subprocess.CompletedProcess[str] | None:
        cp = celery_cli("inspect", "ping")
        ok = cp.returncode == 0 and all(
            re.search(rf"{re.escape(w.hostname)}: OK\s+pong", cp.stdout) for w in workers
        )
        return cp if ok else None

    cp = wait_until(both_pong, timeout=90, every=0.5)
    assert cp, logs(*workers)
    assert "2 nodes online" in cp.stdout, cp.stdout


def test_inspect_active_queues_stats_registered(workers: tuple[CeleryWorker, ...]) -> None:
    hosts = {w.hostname for w in workers}

    queues = replies_from(hosts, "inspect", "active_queues")
    for h in hosts:
        assert "celery" in {q["name"] for q in queues[h]}

    stats = replies_from(hosts, "inspect", "stats")
    for w in workers:
        assert w.proc is not None and stats[w.hostname]["pid"] == w.proc.pid
        assert stats[w.hostname]["pool"]["max-concurrency"] == 2

    registered = replies_from(hosts, "inspect", "registered")
    for h in hosts:
        assert {"tests.apps.worker_app.add", "tests.apps.worker_app.mark"} <= set(registered[h])


def test_control_revoke_of_a_waiting_countdown_task(workers: tuple[CeleryWorker, ...]) -> None:
    # Due in an hour: it cannot come due while the revoke is under way, however slow the
    # machine. Once both workers flagged it, the test makes it due at once.
    r = mark.apply_async(("revoked",), countdown=3600)
    flagged = re.escape(f"tasks {{'{r.id}'}} flagged as revoked")

    def flagged_by_both() -> subprocess.CompletedProcess[str] | None:
        cp = celery_cli("control", "revoke", r.id)  # idempotent: asked again until both reply
        ok = all(re.search(rf"{re.escape(w.hostname)}: OK\s+{flagged}", cp.stdout) for w in workers)
        return cp if ok else None

    cp = wait_until(flagged_by_both, timeout=90, every=0.5)
    assert cp, logs(*workers)
    # Flagged while still waiting in the broker, undelivered (Celery already records the
    # REVOKED state for a task no worker holds).
    assert broker_rows(r.id) == 1 and runs(r.id) == []
    assert AsyncResult(r.id).state == "REVOKED"
    sql = f'UPDATE "{BROKER_SCHEMA}".message SET visible_at = now() WHERE task_id = %s'
    query(f"{sql} RETURNING id", r.id)
    # Now due: a worker claims it, finds it in its revoked set, drops it and acks it.
    assert wait_until(lambda: broker_rows(r.id) == 0, timeout=60), logs(*workers)
    discarded = f"Discarding revoked task: tests.apps.worker_app.mark[{r.id}]"
    dropped = wait_until(lambda: any(discarded in w.log() for w in workers), timeout=30)
    assert dropped, logs(*workers)
    assert runs(r.id) == []
    assert AsyncResult(r.id).state == "REVOKED"


def test_control_rate_limit(workers: tuple[CeleryWorker, ...]) -> None:
    task = "tests.apps.worker_app.mark"
    hosts = {w.hostname for w in workers}
    try:
        replies = replies_from(hosts, "control", "rate_limit", task, "100/m")
        assert set(replies) == hosts
        for h in hosts:
            assert "new rate limit set successfully" in replies[h]["ok"]
        registered = replies_from(hosts, "inspect", "registered", "rate_limit")
        for h in hosts:
            assert f"{task} [rate_limit=100/m]" in registered[h]
    finally:
        replies_from(hosts, "control", "rate_limit", task, "0")


def test_control_shutdown_stops_the_worker(workers: tuple[CeleryWorker, ...]) -> None:
    w = CeleryWorker("cw-shutdown")
    try:
        w.start(timeout=120)
        assert w.proc is not None
        # Only this worker (-d): the module's workers must stay up. Celery's shutdown
        # handler raises WorkerShutdown before replying, on every transport, so the CLI
        # reports no reply; the worker exiting cleanly is the answer.
        celery_cli("control", "shutdown", "-d", w.hostname)
        assert wait_until(lambda: w.proc.poll() is not None, timeout=60), w.log()[-3000:]
        assert w.proc.returncode == 0
        assert "Got shutdown from remote" in w.log()
    finally:
        w.stop()
    # The others were not addressed and still answer; the stopped one does not.
    hosts = {x.hostname for x in workers}
    replies = replies_from(hosts, "inspect", "ping")
    assert set(replies) == hosts


#: A process that consumes queue argv[1] (x-expires argv[2]) until it is killed.
CANARY = """
import sys
from kombu import Queue
from tests.apps.worker_app import app
with app.connection_for_read() as conn:
    queue = Queue(sys.argv[1], expires=float(sys.argv[2]))
    with conn.Consumer(queue, callbacks=[lambda body, message: None]):
        try:
            conn.drain_events(timeout=0.5)
        except TimeoutError:
            pass
        print("consuming", flush=True)
        sys.stdin.read()
"""


def test_solo_worker_still_answers_after_a_long_task(
    workers: tuple[CeleryWorker, ...], queue: str
) -> None:
    w = CeleryWorker("cw-solo", pool="solo", concurrency=1, args=["-Q", queue])
    label = uuid.uuid4().hex
    pidbox = f"{w.hostname}.celery.pidbox"
    try:
        w.start(timeout=120)
        replies_from({w.hostname}, "inspect", "ping", "-d", w.hostname)
        r = hold.apply_async((label, 600.0), queue=queue)
        assert wait_until(lambda: runs(r.id), timeout=60), w.log()[-3000:]
        # From now on the solo worker's event loop is blocked in the task. The canary: a
        # process that consumes a queue with the same x-expires and broker options, and is
        # then killed. Its queue and its registration were last kept alive after the task
        # started, so they lapse no earlier than those of a control queue that nobody kept
        # alive since; once a sweep removed the canary, it would have removed that one too.
        canary = f"canary-{uuid.uuid4().hex[:10]}"
        expires = str(worker_app.app.conf.control_queue_expires)
        consumer = subprocess.Popen(
            [sys.executable, "-c", CANARY, canary, expires],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert consumer.stdout is not None
            assert consumer.stdout.readline().strip() == "consuming"
        finally:
            consumer.kill()
            consumer.wait(timeout=30)

        def exists(name: str) -> bool:
            return bool(query(f'SELECT 1 FROM "{BROKER_SCHEMA}".queue WHERE name = %s', name))

        assert exists(canary)
        assert wait_until(lambda: not exists(canary), timeout=240, every=0.5), logs(*workers)
        assert exists(pidbox), "the busy worker's control queue was swept"
        assert r.state == "STARTED", "the long task was over before the sweep"
        query(f"INSERT INTO {RUNS} (name, value) VALUES ('release', %s) RETURNING 1", label)
        assert r.get(timeout=RESULT_TIMEOUT) == "released"
        # And it answers again once the long task is over.
        replies_from({w.hostname}, "inspect", "ping", "-d", w.hostname)
    finally:
        w.stop()


# -- events --------------------------------------------------------------------------


def test_events_reach_an_independent_receiver(workers: tuple[CeleryWorker, ...]) -> None:
    # The receiver's queue is bound to the topic exchange in the database.
    with captured_events() as seen:
        r = add.delay(4, 4)
        assert r.get(timeout=RESULT_TIMEOUT) == 8
        wanted = {"task-received", "task-started", "task-succeeded"}
        arrived = wait_until(lambda: wanted <= set(events_of(seen, r.id)), timeout=30)
        assert arrived, events_of(seen, r.id)
        hosts = {e["hostname"] for e in list(seen) if e.get("uuid") == r.id}
        assert hosts <= {w.hostname for w in workers} and len(hosts) == 1


# -- delays and leases ---------------------------------------------------------------


@pytest.mark.parametrize("native_delay", [True, False], ids=["native-delay", "held-by-worker"])
def test_countdown_longer_than_lease_runs_once_not_before_its_eta(
    queue: str, native_delay: bool
) -> None:
    """Lease 2 s, countdown 5 s: stored invisible (native) or held by the worker (renewed).

    How late it runs is not asserted (a loaded machine may run it late); that it runs once,
    never before its ETA, and without losing its lease while it waits, is.
    """
    flag = "true" if native_delay else "false"
    env = {"ROAST_JOBS_LEASE_SECONDS": "2", "ROAST_JOBS_NATIVE_DELAY": flag}
    producer = make_celery(
        Settings(lease_seconds=2, native_delay=native_delay),  # type: ignore[call-arg]
        main="tests",
    )
    w = CeleryWorker(f"cw-eta-{flag}", args=["-Q", queue], env=env)
    try:
        w.start(timeout=120)
        eta = datetime.now(UTC) + timedelta(seconds=5)
        r = producer.send_task("tests.apps.worker_app.mark", args=["eta"], eta=eta, queue=queue)
        assert r.get(timeout=RESULT_TIMEOUT) == "eta"
        assert wait_until(lambda: broker_rows(r.id) == 0, timeout=30)
        time.sleep(1.0)  # room for a duplicate delivery to show up
        got = runs(r.id)
        assert len(got) == 1, f"ran {len(got)} times\n{w.log()[-3000:]}"
        # Not before its ETA (same host clock; 0.25 s for rounding between the clocks of
        # Python and PostgreSQL). No upper bound: lateness is the machine's load.
        assert (got[0][2] - eta).total_seconds() >= -0.25, (got[0][2], eta)
        assert "lost the lease" not in w.log()
    finally:
        w.stop()
        producer.close()


def test_held_eta_tasks_are_handed_back_on_warm_shutdown(queue: str) -> None:
    """Without native delay the worker holds ETA tasks; stopping it hands them back."""
    env = {"ROAST_JOBS_LEASE_SECONDS": "2", "ROAST_JOBS_NATIVE_DELAY": "false"}
    producer = make_celery(
        Settings(lease_seconds=2, native_delay=False),  # type: ignore[call-arg]
        main="tests",
    )
    first = CeleryWorker("cw-held-a", args=["-Q", queue], env=env)
    second = CeleryWorker("cw-held-b", args=["-Q", queue], env=env)
    try:
        first.start(timeout=120)
        # Far enough ahead that the first worker is stopped before it is due; checked
        # below as an order (nothing ran before the stop), not a duration.
        eta = datetime.now(UTC) + timedelta(seconds=20)
        sent = [
            producer.send_task(
                "tests.apps.worker_app.mark", args=[f"held-{i}"], eta=eta, queue=queue
            )
            for i in range(3)
        ]
        ids = {r.id for r in sent}

        def scheduled() -> set[str]:
            cp = celery_cli("inspect", "scheduled", "-d", first.hostname, "--json")
            if cp.returncode != 0:
                return set()
            replies = json.loads(cp.stdout.strip().splitlines()[-1])
            return {e["request"]["id"] for e in replies.get(first.hostname, [])}

        assert wait_until(lambda: ids <= scheduled(), timeout=60, every=0.5), first.log()[-3000:]
        first.stop()
        assert all(runs(r.id) == [] for r in sent), "ran before the first worker stopped"
        assert "Restoring 3 unacknowledged message(s)" in first.log()
        second.start(timeout=120)
        assert [r.get(timeout=RESULT_TIMEOUT) for r in sent] == ["held-0", "held-1", "held-2"]
        time.sleep(1.0)  # room for a duplicate to show up
        for r in sent:
            got = runs(r.id)
            assert len(got) == 1, f"{r.id} ran {len(got)} times"
            assert (got[0][2] - eta).total_seconds() >= -0.25  # not before its ETA
        assert "lost the lease" not in first.log() + second.log()
    finally:
        first.stop()
        second.stop()
        producer.close()


# -- priorities ----------------------------------------------------------------------


def test_high_priority_served_first_from_a_backlog(queue: str) -> None:
    # No worker consumes the queue yet: build the backlog, oldest first, low priority.
    low = [mark.apply_async((f"low-{i}",), queue=queue, priority=1) for i in range(6)]
    high = [mark.apply_async((f"high-{i}",), queue=queue, priority=8) for i in range(3)]
    w = CeleryWorker("cw-prio", concurrency=1, args=["-Q", queue, "--prefetch-multiplier", "1"])
    try:
        w.start(timeout=120)
        for r in low + high:
            r.get(timeout=RESULT_TIMEOUT)
    finally:
        w.stop()
    ids = [r.id for r in low + high]
    order = query(
        f"SELECT value FROM {RUNS} WHERE task_id = ANY(%s) AND name = 'mark' ORDER BY at", ids
    )
    labels = [o[0] for o in order]
    assert len(labels) == 9
    assert sorted(labels[:3]) == ["high-0", "high-1", "high-2"], labels
    assert labels[3:] == [f"low-{i}" for i in range(6)], labels
