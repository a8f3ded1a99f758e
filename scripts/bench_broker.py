#!/usr/bin/env python
"""Compare roast-jobs' PostgreSQL broker with Celery on Redis and kombu's SQLAlchemy transport.

Run from the repository root:

    .venv/bin/python scripts/bench_broker.py [--tasks 2000] [--latency-samples 200]
        [--brokers roast-jobs,redis,sqla]

One run, the same workloads on every broker, one markdown table:

1. enqueue: one producer calling ``.delay()`` on a no-op task N times;
2. burn-down: those N tasks already queued, then ONE ``celery worker -P prefork -c 2``
   (``task_acks_late=True``, no result backend) is started; the rate runs from the first
   task start to the last task end, as the tasks themselves record them;
3. pickup latency on an idle worker, from just before ``.delay()`` to the task's start;
4. peak RSS of the worker (main process + pool children), sampled during the burn-down;
5. raw kombu publish and consume (+ ack) rates, without Celery.

Tasks record their timestamps by appending one line per run to a file (one ``write(2)``
with ``O_APPEND``), which costs every broker the same and loads none of the servers.

This file is also the Celery app of the worker subprocesses (``celery -A bench_broker``):
with ``BENCH_BROKER_URL`` set, importing it builds ``app`` from the environment.
Heavy imports (psutil, psycopg, redis, sqlalchemy) happen inside the driver's functions
so that they do not inflate the workers' memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Celery

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent

ENV_URL = "BENCH_BROKER_URL"
ENV_OPTIONS = "BENCH_TRANSPORT_OPTIONS"
ENV_RECORD = "BENCH_RECORD_FILE"

TASK_NAME = "bench.noop"
TASK_QUEUE = "bench_tasks"
RAW_QUEUE = "bench_raw"

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
BROKER_KEYS = ("roast-jobs", "redis", "sqla")
LABELS = {"roast-jobs": "roast-jobs (PostgreSQL)", "redis": "Redis", "sqla": "kombu SQLAlchemy"}


# -- the Celery app (driver and worker) ---------------------------------------------------

_record: tuple[int, int] | None = None  # (pid, fd) of the record file in this process


def _record_line(line: str) -> None:
    global _record
    pid = os.getpid()
    if _record is None or _record[0] != pid:
        fd = os.open(os.environ[ENV_RECORD], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _record = (pid, fd)
    os.write(_record[1], line.encode())


def noop(seq: int = -1, tag: str = "") -> None:
    """The benchmark task: note when it ran, nothing else."""
    start = time.time()
    _record_line(f"{tag or '-'} {seq} {start:.6f} {time.time():.6f} {os.getpid()}\n")


def make_app(broker_url: str, transport_options: dict[str, Any] | None = None) -> Celery:
    """The same Celery configuration for every broker; only the broker differs."""
    if urlsplit(broker_url).scheme in ("postgresql", "postgres", "pgsql"):
        import roast_jobs.broker  # noqa: F401 - registers postgresql:// for kombu
    app = Celery("bench_broker", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options or {},
        broker_connection_retry_on_startup=True,
        task_default_queue=TASK_QUEUE,
        task_acks_late=True,
        task_ignore_result=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
    )
    app.task(name=TASK_NAME, ignore_result=True)(noop)
    return app


# What `celery -A bench_broker worker` finds in a worker subprocess.
app: Celery | None = (
    make_app(os.environ[ENV_URL], json.loads(os.environ.get(ENV_OPTIONS) or "{}"))
    if os.environ.get(ENV_URL)
    else None
)


# -- helpers -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Record:
    seq: int
    start: float
    end: float
    pid: int


class RecordFile:
    """Reads, as they arrive, the lines the tasks append."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self._offset = 0
        self._partial = b""
        self.by_tag: dict[str, list[Record]] = {}

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            tag, seq, start, end, pid = raw.decode().split()
            self.by_tag.setdefault(tag, []).append(
                Record(int(seq), float(start), float(end), int(pid))
            )

    def records(self, tag: str) -> list[Record]:
        self.poll()
        return self.by_tag.get(tag, [])

    def unique(self, tag: str) -> int:
        return len({r.seq for r in self.records(tag)})


class Worker:
    """One real ``celery worker -P prefork -c 2`` subprocess (or ``concurrency`` and
    ``extra`` options), in its own process group."""

    def __init__(
        self,
        broker: Broker,
        record: Path,
        log: Path,
        name: str,
        concurrency: int = 2,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.broker = broker
        self.record = record
        self.log_path = log
        self.name = name
        self.concurrency = concurrency
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench_broker", "worker",
            "-P", "prefork", "-c", str(self.concurrency), "-l", "WARNING", "-Q", TASK_QUEUE,
            "-n", f"{self.name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", *self.extra,
        ]  # fmt: skip
        path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p)
        env = {
            **os.environ,
            "PYTHONPATH": path,
            ENV_URL: self.broker.url,
            ENV_OPTIONS: json.dumps(self.broker.options),
            ENV_RECORD: str(self.record),
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def rss(self) -> tuple[int, int]:
        """(main, children) resident set sizes in bytes; (0, 0) when gone."""
        import psutil

        if self.proc is None:
            return 0, 0
        try:
            main = psutil.Process(self.proc.pid)
            main_rss = main.memory_info().rss
            kids = main.children(recursive=True)
        except psutil.Error:
            return 0, 0
        kids_rss = 0
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                kids_rss += kid.memory_info().rss
        return main_rss, kids_rss

    def stop(self, timeout: float = 20) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # stray pool children of our group
            os.killpg(proc.pid, signal.SIGKILL)


# -- brokers -----------------------------------------------------------------------------


@dataclass
class Broker:
    key: str
    url: str
    options: dict[str, Any]
    setup: Callable[[], None]
    teardown: Callable[[], None]
    #: Messages of the task queue still in the broker (waiting or unacked).
    leftover: Callable[[], int]
    #: At most this many tasks count for the burn-down (None: all of them) ...
    burn_cap: int | None = None
    #: ... and the burn-down stops after this many seconds (None: --burn-timeout).
    burn_timeout: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return LABELS[self.key]


def pg_execute(pg_url: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        for statement in statements:
            conn.execute(statement)


def drop_schema(pg_url: str, schema: str, app_name: str | None = None) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        try:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            return
        except psycopg.errors.LockNotAvailable:
            if app_name is None:
                raise
        # A session of ours left idle in a transaction (kombu's SQLAlchemy channel never
        # closes its session): end our own backends, found by this run's application_name.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app_name,),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def pg_count(pg_url: str, query: str, *params: Any) -> int:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def redis_leftover(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        # kombu keeps unacked messages in the 'unacked' hash until acked
        return int(client.llen(TASK_QUEUE)) + int(client.hlen("unacked"))
    finally:
        client.close()


def drop_roast_schema(pg_url: str, schema: str) -> None:
    from roast_jobs.broker.maintenance import forget_schema

    drop_schema(pg_url, schema)
    forget_schema(schema)  # this process would otherwise assume the tables still exist


def make_brokers(args: argparse.Namespace, run_id: str, round_: int) -> list[Broker]:
    """The brokers of one round: fresh schemas (and a flushed Redis db) every round."""
    pg_url: str = args.pg_url
    out: list[Broker] = []
    for key in args.brokers:
        if key == "roast-jobs":
            schema = f"bench_{run_id}_{round_}_rj"
            out.append(
                Broker(
                    key=key,
                    url=with_query(pg_url, schema=schema),
                    options={},
                    setup=lambda: None,  # the transport creates its schema
                    teardown=lambda s=schema: drop_roast_schema(pg_url, s),
                    leftover=lambda s=schema: pg_count(
                        pg_url, f'SELECT count(*) FROM "{s}".message WHERE queue = %s', TASK_QUEUE
                    ),
                    notes=[f"schema bench_{run_id}_<round>_rj (dropped), transport defaults"],
                )
            )
        elif key == "redis":
            redis_url: str = args.redis_url

            def flush(url: str = redis_url) -> None:
                import redis

                client = redis.Redis.from_url(url)
                client.flushdb()
                client.close()

            out.append(
                Broker(
                    key=key,
                    url=redis_url,
                    options={},
                    setup=flush,
                    teardown=flush,
                    leftover=lambda url=redis_url: redis_leftover(url),
                    notes=[f"db {urlsplit(redis_url).path.strip('/') or '0'} flushed"],
                )
            )
        elif key == "sqla":
            # kombu 5.7: 'sqla+' + an SQLAlchemy URL; table names come from the transport
            # options queue_tablename / message_tablename. Its sequences and index names
            # are fixed, so the tables also get a schema of their own (via search_path).
            schema = f"bench_{run_id}_{round_}_sqla"
            app_name = f"bench_{run_id}_sqla"
            parts = urlsplit(pg_url)
            sa_url = urlunsplit(parts._replace(scheme="postgresql+psycopg"))
            sa_url = with_query(
                sa_url, options=f"-csearch_path={schema}", application_name=app_name
            )
            out.append(
                Broker(
                    key=key,
                    url="sqla+" + sa_url,
                    options={
                        # kombu declares its models once per process: same names every round
                        "queue_tablename": f"bench_{run_id}_queue",
                        "message_tablename": f"bench_{run_id}_message",
                    },
                    setup=lambda s=schema: pg_execute(pg_url, f'CREATE SCHEMA "{s}"'),
                    teardown=lambda s=schema, a=app_name: drop_schema(pg_url, s, a),
                    # It keeps delivered rows (visible = false) and never deletes them.
                    leftover=lambda s=schema: pg_count(
                        pg_url,
                        f'SELECT count(*) FROM "{s}"."bench_{run_id}_message" WHERE visible',
                    ),
                    burn_cap=args.sqla_burn_tasks or None,
                    burn_timeout=args.sqla_burn_timeout,
                    notes=[
                        f"schema bench_{run_id}_<round>_sqla (dropped)",
                        "burn-down cap (stops early if reached): "
                        + (f"{args.sqla_burn_tasks} tasks or " if args.sqla_burn_tasks else "")
                        + f"{args.sqla_burn_timeout:.0f}s",
                    ],
                )
            )
    return out


# -- workloads ---------------------------------------------------------------------------


@dataclass
class Result:
    enqueue_rate: float | None = None
    enqueue_n: int = 0
    burn_rate: float | None = None
    burn_target: int = 0
    burn_done: int = 0
    burn_dups: int = 0
    burn_span: float = 0.0
    burn_timed_out: bool = False
    burn_leftover: int | None = None
    rss_peak: int = 0
    rss_main: int = 0
    rss_children: int = 0
    lat_p50: float | None = None
    lat_p99: float | None = None
    lat_max: float | None = None
    lat_n: int = 0
    lat_got: int = 0
    raw_n: int = 0
    raw_publish_rate: float | None = None
    raw_consume_rate: float | None = None
    raw_consumed: int = 0
    #: Prefetch-1 burn-downs by concurrency: (tasks ran, first start to last end).
    prefetch1: dict[int, tuple[int, float]] = field(default_factory=dict)
    bulk_rate: float | None = None
    tx_rate: float | None = None
    tx_batch_rate: float | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for(
    cond: Callable[[], bool], timeout: float, worker: Worker | None, every: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        if worker is not None:
            worker.check_alive()
        time.sleep(every)
    return cond()


def enqueue(app: Celery, n: int, res: Result) -> None:
    task = app.tasks[TASK_NAME]
    task.delay(-1, "warm")  # connects and declares; burned down with the rest
    t0 = time.perf_counter()
    for i in range(n):
        task.delay(i, "burn")
    elapsed = time.perf_counter() - t0
    res.enqueue_n = n
    res.enqueue_rate = n / elapsed


def burn_down(
    broker: Broker, n: int, logs: Path, records: RecordFile, timeout: float, res: Result
) -> None:
    target = min(n, broker.burn_cap) if broker.burn_cap else n
    timeout = broker.burn_timeout or timeout
    res.burn_target = target
    worker = Worker(broker, records.path, logs.with_suffix(".burn.log"), "bench-burn")
    peak = (0, 0, 0)
    worker.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            main, kids = worker.rss()
            if main + kids > peak[0]:
                peak = (main + kids, main, kids)
            done = records.unique("burn")
            if done >= target:
                break
            if time.monotonic() > deadline:
                res.burn_timed_out = True
                break
            worker.check_alive()
            time.sleep(0.05)
    finally:
        worker.stop()
    res.rss_peak, res.rss_main, res.rss_children = peak
    recs = records.records("burn")
    seqs = [r.seq for r in recs]
    res.burn_done = len(set(seqs))
    res.burn_dups = len(seqs) - len(set(seqs))
    if res.burn_dups:
        res.errors.append(f"burn-down: {res.burn_dups} task(s) ran more than once")
    if len(recs) >= 2:
        first = min(r.start for r in recs)
        last = max(r.end for r in recs)
        res.burn_span = last - first
        res.burn_rate = res.burn_done / res.burn_span if res.burn_span > 0 else None
    if res.burn_timed_out:
        res.notes.append(f"burn-down stopped after {timeout:.0f}s: {res.burn_done}/{target} ran")
    elif target < n:
        res.notes.append(f"burn-down counted the first {target} of {n} queued tasks")
    if res.burn_done >= n:  # everything ran and the worker is gone: the queue must be empty
        res.burn_leftover = broker.leftover()
        if res.burn_leftover:
            res.errors.append(f"burn-down: {res.burn_leftover} message(s) left in the broker")


def prefetch_one_burn(
    broker: Broker,
    app: Celery,
    n: int,
    concurrency: int,
    stem: Path,
    records: RecordFile,
    timeout: float,
    res: Result,
) -> None:
    """N queued tasks, then a worker with ``--prefetch-multiplier 1`` (Celery's advice for
    long tasks): how fast a freed slot gets the next task."""
    tag = f"p1c{concurrency}"
    task = app.tasks[TASK_NAME]
    for i in range(n):
        task.delay(i, tag)
    worker = Worker(
        broker, records.path, stem.with_suffix(f".{tag}.log"), f"bench-{tag}",
        concurrency=concurrency, extra=("--prefetch-multiplier", "1"),
    )  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: records.unique(tag) >= n, timeout, worker)
    finally:
        worker.stop()
    recs = records.records(tag)
    done = len({r.seq for r in recs})
    span = max(r.end for r in recs) - min(r.start for r in recs) if len(recs) >= 2 else 0.0
    res.prefetch1[concurrency] = (done, span)
    if done < n:
        res.notes.append(f"prefetch-1 -c {concurrency}: {done}/{n} ran in {timeout:.0f}s")


def pickup_latency(
    broker: Broker,
    app: Celery,
    samples: int,
    logs: Path,
    records: RecordFile,
    timeout: float,
    res: Result,
) -> None:
    app.control.purge()  # whatever the burn-down left
    task = app.tasks[TASK_NAME]
    worker = Worker(broker, records.path, logs.with_suffix(".latency.log"), "bench-lat")
    worker.start()
    try:
        task.delay(-1, "ready")
        if not wait_for(lambda: records.unique("ready") > 0, 120, worker):
            raise TimeoutError(f"worker did not run a task in 120s:\n{worker.log_tail()}")
        time.sleep(1.0)  # let it go idle
        rng = random.Random(1234)
        sent: list[float] = []
        for i in range(samples):
            sent.append(time.time())
            task.delay(i, "lat")
            time.sleep(rng.uniform(0.020, 0.050))
        res.lat_n = samples
        if not wait_for(lambda: records.unique("lat") >= samples, timeout, worker):
            res.notes.append(f"latency: only {records.unique('lat')}/{samples} ran in {timeout}s")
    finally:
        worker.stop()
    starts: dict[int, float] = {}
    for r in records.records("lat"):
        starts.setdefault(r.seq, r.start)
    lat = [(starts[i] - sent[i]) * 1000 for i in range(len(sent)) if i in starts]
    res.lat_got = len(lat)
    if lat:
        res.lat_p50 = percentile(lat, 50)
        res.lat_p99 = percentile(lat, 99)
        res.lat_max = max(lat)


BULK_QUEUE = "bench-bulk"  # nobody consumes it; purged after each measurement
TX_BATCH = 100


def job_features(app: Celery, broker: Broker, bulk: int, tx: int, res: Result) -> None:
    """roast-jobs only: bulk send (JobManager.send_many, COPY) and sends inside the
    caller's transaction (enqueue_in), one per transaction and 100 per transaction."""
    import psycopg

    from roast_jobs.broker.connections import split_url
    from roast_jobs.jobs import JobManager, TaskCall, enqueue_in

    task = app.tasks[TASK_NAME]
    libpq, _ = split_url(broker.url)
    with JobManager(app) as jm, psycopg.connect(libpq) as conn:
        schema = jm.link.schema
        calls = [TaskCall(args=(i, "bulk"), priority=i % 10) for i in range(bulk)]
        jm.send_many(task, calls[:100], queue=BULK_QUEUE)  # template, connections: warm
        t0 = time.perf_counter()
        published = jm.send_many(task, calls, queue=BULK_QUEUE)
        res.bulk_rate = bulk / (time.perf_counter() - t0)
        if sum(p.created for p in published) != bulk:
            res.errors.append("bulk send: not every message was created")
        t0 = time.perf_counter()
        for i in range(tx):
            with enqueue_in(conn):
                task.apply_async((i, "tx"), queue=BULK_QUEUE)
            conn.commit()
        res.tx_rate = tx / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for start in range(0, tx, TX_BATCH):
            with enqueue_in(conn):
                for i in range(start, min(tx, start + TX_BATCH)):
                    task.apply_async((i, "txb"), queue=BULK_QUEUE)
            conn.commit()
        res.tx_batch_rate = tx / (time.perf_counter() - t0)
        conn.execute(f'DELETE FROM "{schema}".message WHERE queue = %s', (BULK_QUEUE,))
        conn.commit()


def raw_kombu(broker: Broker, n: int, timeout: float, res: Result) -> None:
    from kombu import Connection, Consumer, Producer, Queue

    if broker.key == "roast-jobs":
        import roast_jobs.broker  # noqa: F401
    queue = Queue(RAW_QUEUE, routing_key=RAW_QUEUE)
    with Connection(broker.url, transport_options=broker.options) as conn:
        channel = conn.default_channel
        queue(channel).declare()
        producer = Producer(channel)
        body = {"hello": "world", "i": 0}
        t0 = time.perf_counter()
        for i in range(n):
            body["i"] = i
            producer.publish(body, routing_key=RAW_QUEUE, serializer="json", retry=False)
        res.raw_n = n
        res.raw_publish_rate = n / (time.perf_counter() - t0)

        got = 0
        last = 0.0

        def on_message(_body: Any, message: Any) -> None:
            nonlocal got, last
            message.ack()
            got += 1
            last = time.perf_counter()

        consumer = Consumer(
            channel, queues=[queue], callbacks=[on_message], accept=["json"], prefetch_count=100
        )
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        with consumer:
            while got < n and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1.0)
        res.raw_consumed = got
        if got:
            res.raw_consume_rate = got / (last - t0)
        if got < n:
            res.notes.append(f"raw consume: {got}/{n} in {timeout:.0f}s")
        with contextlib.suppress(Exception):
            queue(channel).purge()


def run_broker(broker: Broker, args: argparse.Namespace, workdir: Path, round_: int) -> Result:
    res = Result()
    stem = workdir / f"{broker.key}-r{round_}"
    records = RecordFile(stem.with_suffix(".records.txt"))
    print(f"== {broker.label}, round {round_}", file=sys.stderr, flush=True)
    broker.setup()
    app = make_app(broker.url, broker.options)
    try:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("enqueue", lambda: enqueue(app, args.tasks, res)),
            (
                "burn-down",
                lambda: burn_down(broker, args.tasks, stem, records, args.burn_timeout, res),
            ),
            (
                "pickup latency",
                lambda: pickup_latency(
                    broker, app, args.latency_samples, stem, records, args.phase_timeout, res
                ),
            ),
            *(
                (
                    f"prefetch-1 burn-down -c {c}",
                    lambda c=c: prefetch_one_burn(
                        broker, app, args.prefetch1_tasks, c, stem, records,
                        args.phase_timeout, res,
                    ),
                )
                for c in (1, 2)
                if args.prefetch1_tasks
            ),
            ("raw kombu", lambda: raw_kombu(broker, args.raw_messages, args.phase_timeout, res)),
        ]  # fmt: skip
        if broker.key == "roast-jobs" and args.bulk:
            steps.append(
                ("job features", lambda: job_features(app, broker, args.bulk, args.tx, res))
            )
        for name, step in steps:
            log(f"{name} ...")
            t0 = time.monotonic()
            try:
                step()
            except Exception as exc:
                res.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
                log(f"{name} FAILED: {exc!r}")
            log(f"{name} done in {time.monotonic() - t0:.1f}s")
    finally:
        app.close()
        if broker.key == "sqla":
            from kombu.transport.sqlalchemy import Channel as SqlaChannel

            for engine, _session in SqlaChannel._engines.values():
                engine.dispose()
        try:
            broker.teardown()
        except Exception as exc:
            res.errors.append(f"teardown: {exc!r}")
    for path in sorted(workdir.glob(f"{stem.name}.*.log")):
        text = path.read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if "ERROR" in ln or "CRITICAL" in ln]
        if bad:
            res.errors.append(f"{path.name}: {len(bad)} error line(s), e.g. {bad[0][:300]}")
    return res


# -- report ------------------------------------------------------------------------------


def transport_fingerprint() -> str:
    """Which transport code ran: the commit, and a hash of the broker files as they are."""
    import hashlib

    import roast_jobs.broker

    pkg = Path(roast_jobs.broker.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(pkg.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    text = f"broker files sha256 {digest.hexdigest()[:12]}"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=pkg, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=pkg, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return text
    if head:
        text += f", git {head}" + (" + uncommitted changes" if dirty else "")
    return text


def machine_info(args: argparse.Namespace) -> list[str]:
    import celery
    import kombu
    import psycopg
    import sqlalchemy

    lines = [
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start",
        f"python {platform.python_version()}, celery {celery.__version__}, "
        f"kombu {kombu.__version__}, psycopg {psycopg.__version__}, "
        f"sqlalchemy {sqlalchemy.__version__}",
        f"roast-jobs transport: {transport_fingerprint()}",
    ]
    try:
        with psycopg.connect(args.pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('fsync'), "
                "current_setting('synchronous_commit'), current_setting('shared_buffers')"
            ).fetchone()
        assert row is not None
        lines.append(
            f"PostgreSQL {row[0]} (fsync={row[1]}, synchronous_commit={row[2]}, "
            f"shared_buffers={row[3]})"
        )
    except Exception as exc:
        lines.append(f"PostgreSQL: unavailable ({exc!r})")
    if "redis" in args.brokers:
        try:
            import redis

            client = redis.Redis.from_url(args.redis_url)
            lines.append(f"Redis {client.info('server')['redis_version']}")
            client.close()
        except Exception as exc:
            lines.append(f"Redis: unavailable ({exc!r})")
    return lines


def fmt_prefetch1(r: Result, concurrency: int) -> str:
    done, span = r.prefetch1.get(concurrency, (0, 0.0))
    if not done:
        return "-"
    rate = fmt_rate(done / span) if span > 0 else "-"
    return f"{rate} ({done} in {span:.2f}s)"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_ms(x: float | None) -> str:
    return "-" if x is None else (f"{x:.1f}" if x < 100 else f"{x:,.0f}")


def fmt_mb(x: int) -> str:
    return f"{x / 2**20:.0f}" if x else "-"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(
    brokers: list[Broker], results: dict[str, Result], args: argparse.Namespace
) -> str:
    def row(name: str, cell: Callable[[Result], str]) -> list[str]:
        return [name, *(cell(results[b.key]) for b in brokers)]

    def burn_cell(r: Result) -> str:
        text = fmt_rate(r.burn_rate)
        if r.burn_rate is not None and (r.burn_timed_out or r.burn_done < args.tasks):
            text += " (capped)"
        return text

    rows = [
        row(f"enqueue, Celery .delay() x {args.tasks} (tasks/s)",
            lambda r: fmt_rate(r.enqueue_rate)),
        row("burn-down, prefork -c 2, acks_late (tasks/s)", burn_cell),
        row("burn-down: tasks ran / queued, first start to last end", lambda r: (
            f"{r.burn_done:.0f}/{args.tasks} in {r.burn_span:.2f}s" if r.burn_target else "-")),
        *(row(f"burn-down, prefork -c {c}, prefetch 1, x {args.prefetch1_tasks} (tasks/s)",
              lambda r, c=c: fmt_prefetch1(r, c)) for c in (1, 2)),
        row(f"pickup latency p50, idle worker, {args.latency_samples} sends (ms)",
            lambda r: fmt_ms(r.lat_p50)),
        row("pickup latency p99 (ms)", lambda r: fmt_ms(r.lat_p99)),
        row("pickup latency max (ms)", lambda r: fmt_ms(r.lat_max)),
        row("worker peak RSS, main + 2 children (MB)", lambda r: fmt_mb(r.rss_peak)),
        row("  of which main / children at peak (MB)", lambda r: (
            f"{fmt_mb(r.rss_main)} / {fmt_mb(r.rss_children)}" if r.rss_peak else "-")),
        row(f"raw kombu publish x {args.raw_messages} (msg/s)",
            lambda r: fmt_rate(r.raw_publish_rate)),
        row("raw kombu consume + ack, prefetch 100 (msg/s)",
            lambda r: fmt_rate(r.raw_consume_rate)),
        row(f"bulk send, JobManager.send_many x {args.bulk} (msg/s)",
            lambda r: fmt_rate(r.bulk_rate)),
        row(f"send in the caller's transaction, 1 per commit x {args.tx} (tasks/s)",
            lambda r: fmt_rate(r.tx_rate)),
        row(f"send in the caller's transaction, {TX_BATCH} per commit (tasks/s)",
            lambda r: fmt_rate(r.tx_batch_rate)),
        row("left in broker after burn-down (should be 0)",
            lambda r: "-" if r.burn_leftover is None else f"{r.burn_leftover:.0f}"),
        row("errors", lambda r: str(len(r.errors))),
        row("notes", lambda r: "; ".join(r.notes) or "-"),
    ]  # fmt: skip
    return markdown(["workload", *(b.label for b in brokers)], rows)


def goals_table(results: dict[str, Result]) -> str:
    rj, rd, sq = results.get("roast-jobs"), results.get("redis"), results.get("sqla")

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    rows: list[list[str]] = []
    p50 = rj.lat_p50 if rj else None
    p99 = rj.lat_p99 if rj else None
    rows.append(["roast-jobs pickup p50 <= 5 ms", f"{fmt_ms(p50)} ms",
                 verdict(None if p50 is None else p50 <= 5)])  # fmt: skip
    rows.append(["roast-jobs pickup p99 <= 20 ms", f"{fmt_ms(p99)} ms",
                 verdict(None if p99 is None else p99 <= 20)])  # fmt: skip
    checks = [
        ("roast-jobs burn-down >= Redis burn-down", "burn_rate", rd, 1.0),
        ("roast-jobs enqueue >= 0.8 x Redis enqueue", "enqueue_rate", rd, 0.8),
        ("roast-jobs burn-down >= 5 x kombu-SQLAlchemy burn-down", "burn_rate", sq, 5.0),
    ]
    for name, attr, other, factor in checks:
        x = ratio(getattr(rj, attr) if rj else None, getattr(other, attr) if other else None)
        shown = (
            "-"
            if x is None
            else (f"{fmt_rate(getattr(rj, attr))} vs {fmt_rate(getattr(other, attr))} ({x:.2f}x)")
        )
        rows.append([name, shown, verdict(None if x is None else x >= factor)])
    bulk = rj.bulk_rate if rj else None
    rows.append(["roast-jobs bulk send >= 50,000 msg/s", f"{fmt_rate(bulk)} msg/s",
                 verdict(None if bulk is None else bulk >= 50_000)])  # fmt: skip
    return markdown(["goal", "measured", "result"], rows)


# -- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--tasks", type=int, default=5000, help="N for enqueue and burn-down")
    p.add_argument("--latency-samples", type=int, default=200)
    p.add_argument(
        "--prefetch1-tasks",
        type=int,
        default=100,
        help="N for the prefetch-1 burn-downs (-c 1 and -c 2); 0 skips them",
    )
    p.add_argument("--raw-messages", type=int, default=5000, help="N for raw kombu")
    p.add_argument(
        "--bulk",
        type=int,
        default=50_000,
        help="messages of the roast-jobs bulk send (0: skip the job features)",
    )
    p.add_argument(
        "--tx",
        type=int,
        default=2000,
        help="tasks sent inside the caller's transaction (roast-jobs)",
    )
    p.add_argument(
        "--brokers",
        default=",".join(BROKER_KEYS),
        help=f"comma-separated subset of {','.join(BROKER_KEYS)}",
    )
    p.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG_URL))
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL),
                   help="its database is FLUSHED before and after")  # fmt: skip
    p.add_argument(
        "--sqla-burn-tasks",
        type=int,
        default=0,
        help="kombu-SQLAlchemy burn-down stops after this many tasks (0: all of --tasks)",
    )
    p.add_argument(
        "--sqla-burn-timeout",
        type=float,
        default=60.0,
        help="kombu-SQLAlchemy burn-down stops after this many seconds (it may be slow)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat everything, brokers interleaved; the table shows medians",
    )
    p.add_argument("--burn-timeout", type=float, default=120.0, help="seconds per burn-down")
    p.add_argument("--phase-timeout", type=float, default=120.0,
                   help="seconds to wait for latency tasks / raw consumption")  # fmt: skip
    p.add_argument("--keep-logs", action="store_true", help="keep worker logs and records")
    args = p.parse_args(argv)
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = set(args.brokers) - set(BROKER_KEYS)
    if unknown or not args.brokers:
        p.error(f"--brokers: choose from {', '.join(BROKER_KEYS)}")
    if min(args.tasks, args.latency_samples, args.raw_messages, args.rounds) < 1:
        p.error("--tasks, --latency-samples, --raw-messages and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    header = [f"command: {command}", *machine_info(args)]
    for line in header:
        print(line, file=sys.stderr)
    runs: dict[str, list[Result]] = {key: [] for key in args.brokers}
    brokers: list[Broker] = []
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    try:
        for round_ in range(1, args.rounds + 1):
            # Rounds interleave the brokers, so that a noisy minute hurts all of them.
            brokers = make_brokers(args, run_id, round_)
            for broker in brokers:
                runs[broker.key].append(run_broker(broker, args, workdir, round_))
    finally:
        done = sum(len(v) for v in runs.values()) == args.rounds * len(args.brokers)
        failed = not done or any(r.errors for v in runs.values() for r in v)
        if args.keep_logs or failed:
            print(f"worker logs and task records kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {b.key: combine(runs[b.key], b.notes) for b in brokers}
    return report(header, brokers, results, args, started)


def combine(rounds: list[Result], notes: list[str]) -> Result:
    """One result from several rounds: medians of the measurements, peaks of the RSS."""
    if len(rounds) == 1:
        out = rounds[0]
        out.notes = [*notes, *out.notes]
        return out

    def med(attr: str) -> Any:
        values = [getattr(r, attr) for r in rounds if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    out = Result()
    for f in fields(Result):
        if f.name in ("errors", "notes"):
            continue
        if f.name.startswith("rss_") or f.name in ("burn_dups", "prefetch1"):
            continue
        setattr(out, f.name, med(f.name))
    for c in {c for r in rounds for c in r.prefetch1}:
        runs_c = [r.prefetch1[c] for r in rounds if c in r.prefetch1]
        out.prefetch1[c] = (min(d for d, _ in runs_c), statistics.median(s for _, s in runs_c))
    peak = max(rounds, key=lambda r: r.rss_peak)
    out.rss_peak, out.rss_main, out.rss_children = peak.rss_peak, peak.rss_main, peak.rss_children
    out.burn_dups = sum(r.burn_dups for r in rounds)
    out.burn_timed_out = any(r.burn_timed_out for r in rounds)
    out.errors = [f"round {i}: {e}" for i, r in enumerate(rounds, 1) for e in r.errors]
    seen: list[str] = list(notes)
    for r in rounds:
        seen += [n for n in r.notes if n not in seen]
    out.notes = seen
    return out


def report(
    header: list[str],
    brokers: list[Broker],
    results: dict[str, Result],
    args: argparse.Namespace,
    started: float,
) -> int:
    print()
    for line in header:
        print(line)
    print(f"total run time {time.monotonic() - started:.0f}s")
    print()
    print(results_table(brokers, results, args))
    print()
    print(goals_table(results))
    errors = [(b.label, e) for b in brokers for e in results[b.key].errors]
    if errors:
        print()
        print("errors:")
        for label, err in errors:
            print(f"- {label}: {err}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
