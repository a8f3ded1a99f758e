"""Chaos tests: real `celery worker` processes and a real PostgreSQL, broken on purpose.

Every task records its runs in a table (tests/apps/chaos_app.py). "None lost" means every
task id sent has at least one successful run; re-runs (duplicates) are allowed, counted
and printed (run with ``-s`` to see the figures).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from celery import Celery

from roast_jobs.config import Settings
from roast_jobs.embedded import RunAs, candidate_bindirs, current_runner
from roast_jobs.tasks.app import make_celery
from tests.apps.chaos_app import POISON, RUNS_TABLE, WORK, ensure_runs_table
from tests.conftest import DATABASE_URL, RESULT_SCHEMA, RUN_ID
from tests.workers import CeleryWorker

LEASE = 3.0  # seconds; short so that a dead worker's messages come back quickly
T = TypeVar("T")


def wait_until(fn: Callable[[], T], timeout: float, every: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; a server outage counts as falsy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except psycopg.OperationalError:
            value = None  # type: ignore[assignment]
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


@dataclass
class Chaos:
    """One test's broker schema, run label and producer, on one PostgreSQL server."""

    url: str
    schema: str
    label: str = field(default_factory=lambda: uuid.uuid4().hex)
    send_errors: int = 0
    streams: list[Stream] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        settings = Settings(  # type: ignore[call-arg]
            DATABASE_URL=self.url, broker_schema=self.schema, result_schema=RESULT_SCHEMA
        )
        self.producer: Celery = make_celery(settings, main="chaos-producer")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "DATABASE_URL": self.url,
            "ROAST_JOBS_BROKER_SCHEMA": self.schema,
            "ROAST_JOBS_RESULT_SCHEMA": RESULT_SCHEMA,
            "ROAST_JOBS_LEASE_SECONDS": str(LEASE),
            "ROAST_JOBS_POLL_INTERVAL": "1.0",
            **extra,
        }

    def send(self, name: str, *args: Any, patience: float = 120.0) -> str:
        """Publish, retrying through outages (a resend reuses the id: harmless)."""
        task_id = uuid.uuid4().hex
        deadline = time.monotonic() + patience
        while True:
            try:
                self.producer.send_task(name, args=args, task_id=task_id)
                return task_id
            except Exception:
                self.send_errors += 1
                if self.closed or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def work(self, count: int, seconds: float = 0.03) -> list[str]:
        return [self.send(WORK, seconds, self.label) for _ in range(count)]

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        sql = sql.replace("{s}", f'"{self.schema}"').replace("{runs}", RUNS_TABLE)
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as c:
            return c.execute(sql, params).fetchall()

    def runs(self, kind: str = "done") -> dict[str, int]:
        """task id -> number of runs of that kind."""
        rows = self.query(
            "SELECT task_id, count(*) FROM {runs} WHERE label = %s AND kind = %s GROUP BY task_id",
            self.label,
            kind,
        )
        return {r[0]: r[1] for r in rows}

    def count(self, table: str) -> int:
        return self.query(f"SELECT count(*) FROM {{s}}.{table}")[0][0]

    def wait_all_done(
        self, ids: list[str], timeout: float, worker: CeleryWorker | None = None
    ) -> dict[str, int]:
        def all_done() -> bool:
            if worker is not None:
                assert_healthy(worker)
            return set(ids) <= set(self.runs())

        wait_until(all_done, timeout=timeout, every=0.25)
        return self.runs()

    def close(self) -> None:
        """Stop sending (a failed test leaves its stream running) and close the producer."""
        self.closed = True
        for stream in self.streams:
            stream.join(timeout=30)
        self.producer.close()


class Stream(threading.Thread):
    """Sends ``count`` work tasks from a thread, one every ``interval`` seconds."""

    def __init__(self, chaos: Chaos, count: int, interval: float) -> None:
        super().__init__(name="chaos-stream", daemon=True)
        self.chaos = chaos
        self.total = count
        self.interval = interval
        self.ids: list[str] = []
        self.error: BaseException | None = None
        chaos.streams.append(self)

    def run(self) -> None:
        try:
            for _ in range(self.total):
                if self.chaos.closed:
                    return
                self.ids.extend(self.chaos.work(1))
                time.sleep(self.interval)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float = 240) -> list[str]:
        self.join(timeout)
        assert not self.is_alive(), "producer stream did not finish"
        assert self.error is None, f"producer failed: {self.error!r}"
        return self.ids


def assert_healthy(worker: CeleryWorker) -> None:
    """Fail at once (rather than at a timeout) when the worker crashed."""
    assert worker.proc is not None
    log = worker.log()
    crashed = "Unrecoverable error" in log or worker.proc.poll() is not None
    assert not crashed, f"worker {worker.name} crashed:\n{log[-6000:]}"


def wait_progress(chaos: Chaos, at_least: int, worker: CeleryWorker, timeout: float) -> int:
    """Wait until ``at_least`` tasks are done; returns how many are."""

    def enough() -> int:
        assert_healthy(worker)
        done = len(chaos.runs())
        return done if done >= at_least else 0

    done = wait_until(enough, timeout=timeout, every=0.1)
    assert done, f"stuck at {len(chaos.runs())} done, waiting for {at_least}"
    return done


def wait_in_flight(chaos: Chaos, worker: CeleryWorker) -> None:
    """Wait until the worker holds leased messages, so that a fault hits work in flight."""

    def leased() -> bool:
        assert_healthy(worker)
        return bool(
            chaos.query(
                "SELECT 1 FROM {s}.message WHERE lease_owner IS NOT NULL "
                "AND visible_at > now() LIMIT 1"
            )
        )

    assert wait_until(leased, timeout=60, every=0.02), "the worker holds nothing"


def check_none_lost(
    chaos: Chaos, ids: list[str], done: dict[str, int], worker: CeleryWorker
) -> None:
    missing = set(ids) - set(done)
    if missing:
        where = chaos.query(
            "SELECT 'message', id, task_id, lease_owner, delivery_count, NULL FROM {s}.message "
            "WHERE task_id = ANY(%s) UNION ALL SELECT 'dead_letter', id, task_id, NULL, "
            "delivery_count, reason FROM {s}.dead_letter WHERE task_id = ANY(%s)",
            list(missing),
            list(missing),
        )
        runs = chaos.query(
            "SELECT task_id, kind, pid, at FROM {runs} WHERE task_id = ANY(%s)", list(missing)
        )
        mentions = [line for line in worker.log().splitlines() if any(m in line for m in missing)]
        raise AssertionError(
            f"{len(missing)} of {len(set(ids))} tasks never ran to completion, e.g. "
            f"{sorted(missing)[:5]}\nrows: {where}\nruns: {runs}\nlog mentions: "
            + "\n".join(mentions[-20:])
            + f"\n{worker.log()[-4000:]}"
        )
    # Every ack lands: nothing is left behind, nothing was buried.
    assert wait_until(lambda: chaos.count("message") == 0, timeout=60), chaos.query(
        "SELECT id, task_id, lease_owner, delivery_count, visible_at FROM {s}.message"
    )
    assert chaos.count("dead_letter") == 0, chaos.query(
        "SELECT id, task_id, reason, delivery_count FROM {s}.dead_letter"
    )


def duplicates(done: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in done.items() if v > 1}


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _runs_table() -> None:
    ensure_runs_table(DATABASE_URL)


@pytest.fixture
def chaos(schema: str) -> Iterator[Chaos]:
    c = Chaos(DATABASE_URL, schema)
    yield c
    c.close()


@pytest.fixture
def workers() -> Iterator[list[CeleryWorker]]:
    """Workers started by a test; all stopped (or killed) afterwards."""
    started: list[CeleryWorker] = []
    yield started
    for worker in started:
        worker.stop(timeout=15)


def spawn(workers: list[CeleryWorker], chaos: Chaos, name: str, **env: str) -> CeleryWorker:
    worker = CeleryWorker(
        f"{name}-{chaos.label[:6]}", app="tests.apps.chaos_app", env=chaos.env(**env)
    )
    workers.append(worker)
    return worker.start(timeout=120)


# -- 1. SIGKILL of a whole worker mid-run ----------------------------------------------


def test_sigkill_of_worker_mid_run_loses_no_task(chaos: Chaos, workers: list[CeleryWorker]) -> None:
    total = 300
    doomed = spawn(workers, chaos, "doomed")
    ids = [chaos.send(WORK, random.uniform(0.02, 0.05), chaos.label) for _ in range(total)]
    assert wait_until(lambda: len(chaos.runs()) >= 60, timeout=120), doomed.log()[-4000:]

    doomed.kill()  # main process and pool children, at once
    killed_at = time.monotonic()
    done_at_kill = len(chaos.runs())
    assert done_at_kill < total, "the worker finished before it could be killed"
    # What the dead worker held: leased (claimed, unacked) rows.
    held = chaos.query(
        "SELECT id, task_id, lease_owner, extract(epoch FROM visible_at - now())::float8 "
        "FROM {s}.message WHERE lease_owner IS NOT NULL AND visible_at > now()"
    )
    assert held, "the killed worker held no messages: nothing to recover"
    assert all(f"/{doomed.proc.pid}/" in row[2] for row in held)  # type: ignore[union-attr]
    # Leases are no longer than lease_seconds (nobody renews them now).
    assert max(row[3] for row in held) <= LEASE + 0.5
    held_ids = [row[0] for row in held]
    held_tasks = {row[1] for row in held}
    dead_owners = sorted({row[2] for row in held})

    rescuer = spawn(workers, chaos, "rescuer")
    ready_after = time.monotonic() - killed_at

    def recovered() -> bool:
        return not chaos.query(
            "SELECT 1 FROM {s}.message WHERE id = ANY(%s) AND lease_owner = ANY(%s)",
            held_ids,
            dead_owners,
        )

    assert wait_until(recovered, timeout=max(LEASE, ready_after) + 30, every=0.05), (
        "the dead worker's messages were not taken over",
        rescuer.log()[-4000:],
    )
    recovered_after = time.monotonic() - killed_at

    done = chaos.wait_all_done(ids, timeout=240)
    all_done_after = time.monotonic() - killed_at
    check_none_lost(chaos, ids, done, rescuer)
    dups = duplicates(done)
    # Only a message the dead worker held (ran, maybe, but never acked) may run twice.
    assert set(dups) <= held_tasks, f"unexpected re-runs: {set(dups) - held_tasks}"
    print(
        f"\n[chaos sigkill] {total} tasks, {done_at_kill} done at kill, {len(held)} held by "
        f"the dead worker; rescuer ready {ready_after:.1f}s after kill, held messages taken "
        f"over {recovered_after:.1f}s after kill (lease {LEASE}s), all done "
        f"{all_done_after:.1f}s after kill; {len(dups)} task(s) ran twice or more "
        f"({sum(dups.values()) - len(dups)} extra runs)"
    )


# -- 2. a task that kills its own worker process ---------------------------------------


def test_poison_task_ends_in_dead_letters_and_worker_keeps_serving(
    chaos: Chaos, workers: list[CeleryWorker]
) -> None:
    max_deliveries = 3
    worker = spawn(workers, chaos, "poisoned", ROAST_JOBS_MAX_DELIVERIES=str(max_deliveries))
    before = chaos.work(10)
    bad = chaos.send(POISON, chaos.label)
    after = chaos.work(10)

    dead = wait_until(
        lambda: chaos.query(
            "SELECT reason, delivery_count, delivered_to, queue FROM {s}.dead_letter "
            "WHERE task_id = %s",
            bad,
        ),
        timeout=180,
        every=0.25,
    )
    assert dead, f"poison task never dead-lettered\n{worker.log()[-4000:]}"
    reason, count, delivered_to, queue = dead[0]
    assert count == max_deliveries
    assert reason == f"delivered {max_deliveries} times without an ack"
    assert queue == "celery"
    # Its delivery history: each delivery went to this worker's consumer.
    assert len(delivered_to) == max_deliveries, delivered_to
    assert all(f"/{worker.proc.pid}/" in owner for owner in delivered_to), delivered_to  # type: ignore[union-attr]
    assert chaos.runs("poison") == {bad: max_deliveries}
    assert not chaos.query("SELECT 1 FROM {s}.message WHERE task_id = %s", bad)

    later = chaos.work(20)
    ids = before + after + later
    done = chaos.wait_all_done(ids, timeout=120)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    missing = set(ids) - set(done)
    assert not missing, f"{len(missing)} normal tasks lost\n{worker.log()[-4000:]}"
    assert wait_until(lambda: chaos.count("message") == 0, timeout=60)
    assert chaos.count("dead_letter") == 1
    print(
        f"\n[chaos poison] dead-lettered after {count} deliveries to {delivered_to}; "
        f"{len(ids)} normal tasks done, {len(duplicates(done))} duplicates"
    )


# -- 3. pg_terminate_backend on the worker's connections -------------------------------


def process_group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state, ppid, pgrp, ...
        if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
            pids.append(int(entry))
    return pids


def local_tcp_ports(pids: list[int]) -> set[int]:
    """Local ports of the TCP sockets these processes hold open."""
    inodes = set()
    for pid in pids:
        fd_dir = Path("/proc", str(pid), "fd")
        try:
            fds = list(fd_dir.iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def terminate_backends_of(worker: CeleryWorker, url: str) -> list[tuple[int, str]]:
    """pg_terminate_backend every server process serving this worker (main + children)."""
    assert worker.proc is not None
    ports = sorted(local_tcp_ports(process_group(worker.proc.pid)))
    with psycopg.connect(url, autocommit=True) as c:
        # Select first, terminate after: in one WHERE clause the planner may call
        # pg_terminate_backend() before the other filters, on every backend.
        rows = c.execute(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE client_port = ANY(%s) AND client_addr IS NOT DISTINCT FROM inet_client_addr() "
            "AND pid <> pg_backend_pid()",
            (ports,),
        ).fetchall()
        for pid, _ in rows:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return [(r[0], r[1]) for r in rows]


def test_terminated_backends_lose_no_task(chaos: Chaos, workers: list[CeleryWorker]) -> None:
    total = 240
    worker = spawn(workers, chaos, "terminated")
    stream = Stream(chaos, total, interval=0.02)
    stream.start()
    killed: list[list[tuple[int, str]]] = []
    for threshold in (50, 140):
        assert wait_progress(chaos, threshold, worker, timeout=120) < total, "finished early"
        wait_in_flight(chaos, worker)
        gone = terminate_backends_of(worker, chaos.url)
        assert any(app == "roast-jobs-broker" for _, app in gone), gone
        killed.append(gone)
    ids = stream.finish()
    done = chaos.wait_all_done(ids, timeout=240, worker=worker)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    check_none_lost(chaos, ids, done, worker)
    dups = duplicates(done)
    print(
        f"\n[chaos terminate] {total} tasks; terminated {[len(k) for k in killed]} backends "
        f"({[sorted({a for _, a in k}) for k in killed]}); {len(dups)} task(s) ran twice or "
        f"more ({sum(dups.values()) - len(dups)} extra runs)"
    )


# -- 4. PostgreSQL restarted under a running worker ------------------------------------


def find_pg_bindir(runner: RunAs) -> Path:
    """initdb, pg_ctl and postgres, found as ``roast_jobs.embedded`` finds them: pgserver's
    (installed by the ``dev`` extra) first, then a local install. None that runs means a
    broken environment: the test fails, it does not skip."""
    tried: list[str] = []
    for path in candidate_bindirs():
        if not all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            tried.append(f"{path}: no initdb/pg_ctl/postgres")
            continue
        try:
            proc = runner.run([str(path / "postgres"), "--version"], timeout=30)
        except OSError as exc:  # e.g. a checkout in a folder the runner cannot enter
            tried.append(f"{path}: {exc}")
            continue
        if proc.returncode == 0:
            return path
        tried.append(f"{path}: {proc.stdout.strip()}")
    pytest.fail(
        f"no PostgreSQL binaries that run as {runner.name} (pip install -e '.[dev]' "
        "installs pgserver's):\n  " + "\n  ".join(tried or ["none found"])
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster in a temporary directory."""

    bindir: Path
    home: Path
    port: int
    runner: RunAs  # as root, an unprivileged user: PostgreSQL refuses to run as root

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, tool: str, *args: str, timeout: float = 120) -> None:
        cmd = [str(self.bindir / tool), *args]
        out = self.runner.run(cmd, timeout=timeout)
        if out.returncode != 0:
            log = self.home / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{cmd} failed (as {self.runner.name}): {out.stdout}\n{tail}")

    def ctl(self, *args: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "server.log"), *args)


@pytest.fixture
def throwaway_pg() -> Iterator[Postgres]:
    runner = current_runner()
    bindir = find_pg_bindir(runner)
    home = Path(tempfile.mkdtemp(prefix="roast-jobs-chaos-pg-"))
    if runner.uid is not None and runner.gid is not None:
        os.chown(home, runner.uid, runner.gid)
    pg = Postgres(bindir, home, free_port(), runner)
    try:
        pg.run(
            "initdb",
            "-D",
            str(pg.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        with (pg.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {pg.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{home}'\n"
                # A killed server process loses nothing the OS already has: skip fsyncs.
                "fsync = off\n"
            )
        pg.ctl("-w", "-t", "60", "start")  # a server that cannot start fails the test
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_postgres_restart_under_running_worker_loses_no_task(
    throwaway_pg: Postgres, workers: list[CeleryWorker]
) -> None:
    pg = throwaway_pg
    ensure_runs_table(pg.url)
    chaos = Chaos(pg.url, f"rjt_{RUN_ID}_restart")
    try:
        worker = spawn(workers, chaos, "restarted")
        stream = Stream(chaos, 150, interval=0.04)
        stream.start()
        wait_progress(chaos, 30, worker, timeout=120)
        wait_in_flight(chaos, worker)
        pg.ctl("-m", "fast", "-w", "-t", "60", "restart")
        # A crash this time (immediate stop: no shutdown checkpoint) and a few seconds down.
        assert wait_progress(chaos, 90, worker, timeout=180) < 150, "finished early"
        wait_in_flight(chaos, worker)
        pg.ctl("-m", "immediate", "-w", "stop")
        time.sleep(3)
        pg.ctl("-w", "-t", "60", "start")
        ids = stream.finish()
        ids += chaos.work(30)  # and keep sending after it is back
        done = chaos.wait_all_done(ids, timeout=240, worker=worker)
        assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
        check_none_lost(chaos, ids, done, worker)
        dups = duplicates(done)
        print(
            f"\n[chaos pg restart] {len(ids)} tasks through a fast restart and a crash; "
            f"{chaos.send_errors} publish retries; {len(dups)} task(s) ran twice or more "
            f"({sum(dups.values()) - len(dups)} extra runs)"
        )
    finally:
        for worker in workers:  # before the server goes
            worker.stop(timeout=15)
        chaos.close()


# -- 5. garbage rows in the message table ----------------------------------------------


def kombu_shaped(task: str, task_id: str) -> str:
    """A well-formed Celery (protocol 2) message for a task no worker knows."""
    body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": task,
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "retries": 0,
                "eta": None,
                "expires": None,
                "argsrepr": "()",
                "kwargsrepr": "{}",
            },
            "properties": {
                "correlation_id": task_id,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
                "delivery_mode": 2,
                "delivery_tag": "x",
            },
        }
    )


def test_garbage_rows_are_dead_lettered_and_worker_keeps_going(
    chaos: Chaos, workers: list[CeleryWorker]
) -> None:
    worker = spawn(workers, chaos, "garbage")
    first = chaos.work(10)
    unknown_id = uuid.uuid4().hex
    garbage = {
        "not json": ("{this is not json", None),
        "json list": ("[1, 2, 3]", None),
        "json without properties": ('{"body": "aGk=", "headers": {}}', None),
        "unknown task": (kombu_shaped("tests.apps.chaos_app.nope", unknown_id), unknown_id),
    }
    row_ids: dict[str, int] = {}
    for name, (payload, task_id) in garbage.items():
        row_ids[name] = chaos.query(
            "INSERT INTO {s}.message (queue, task_id, payload) VALUES ('celery', %s, %s) "
            "RETURNING id",
            task_id,
            payload,
        )[0][0]
        # Garbage inserted by hand sends no NOTIFY: the safety poll must find it.
    second = chaos.work(10)

    def buried() -> dict[int, str]:
        rows = chaos.query(
            "SELECT id, reason FROM {s}.dead_letter WHERE id = ANY(%s)", list(row_ids.values())
        )
        return dict(rows) if len(rows) == len(row_ids) else {}

    reasons = wait_until(buried, timeout=60, every=0.25)
    assert reasons, (buried(), worker.log()[-4000:])
    assert reasons[row_ids["not json"]].startswith("payload is not JSON")
    assert reasons[row_ids["json list"]] == "payload is not a kombu message (no properties)"
    assert reasons[row_ids["json without properties"]] == (
        "payload is not a kombu message (no properties)"
    )
    assert reasons[row_ids["unknown task"]] == "rejected"

    third = chaos.work(10)
    ids = first + second + third
    done = chaos.wait_all_done(ids, timeout=120)
    assert worker.proc is not None and worker.proc.poll() is None, "the worker died"
    missing = set(ids) - set(done)
    assert not missing, f"{len(missing)} normal tasks lost\n{worker.log()[-4000:]}"
    assert wait_until(lambda: chaos.count("message") == 0, timeout=60)
    assert chaos.count("dead_letter") == len(garbage)
    print(f"\n[chaos garbage] dead letters: { {k: reasons[v] for k, v in row_ids.items()} }")
