#!/usr/bin/env python
"""Compare RoastMyPost's two job paths in roast-jobs: the legacy ``Job`` table worked by
the legacy poller, and Celery on roast-jobs' PostgreSQL broker.

Run from the repository root:

    .venv/bin/python scripts/bench_domain.py [--database-url URL] [--rounds R]
        [--json FILE] [--quick]

One run, on a throwaway database it creates (``rj_bench_<random>`` on the server of
``--database-url`` / $DATABASE_URL, migrated, dropped at the end even on Ctrl-C), the
same workloads on both paths (picked with ``flags.rollout(0 | 100)``), one table:

1. create latency: ``JobService.create_evaluation_job`` p50/p99, no worker running,
   after a warm-up; the two paths alternate in blocks of 50 calls, so that a noisy
   minute hurts both;
2. a batch of 1,000: ``create_batch_jobs(agent, document_ids=...)``. Celery off, the call
   fans out inline; Celery on, it sends one ``batch`` task, and a running
   ``celery worker -Q batch`` creates the jobs: both the call and the time until all
   1,000 jobs exist (the batch task's ``date_done``) are reported;
3. pickup latency, idle workers, jobs created one at a time with small gaps:
   ``createdAt -> startedAt`` of the ``Job`` row (both on the database clock; createdAt
   is the creating transaction's start, so this includes the create itself) and, for
   information, the client's commit -> ``startedAt`` (the client's clock mapped onto
   the database's); the legacy worker with its defaults (poll 1 s, 5 at once) vs
   ``celery worker -c 2 -Q evaluation``, each warmed up by a few jobs first. When jobs
   come faster than a worker runs them, the latency includes queueing: the table also
   shows the p50 of the jobs created while a process was free and none of ours waited
   (pickup alone), and the run time;
4. end-to-end throughput: a batch of N offline evaluations, from the create call until
   the last job is COMPLETED (its ``completedAt``): the legacy worker with its defaults
   vs ``celery worker -c 2 -Q evaluation,batch`` (the app's prefetch multiplier).

Workers are real subprocesses (``roast-jobs legacy-worker``, ``celery -A
roast_jobs.tasks.worker worker -l WARNING``) with DATABASE_URL=<the throwaway database>,
the default offline evaluator and the default broker/result schemas; they are stopped
(SIGTERM, then SIGKILL) whatever happens. Their logs are kept when something failed.

``--phases`` runs a subset (to work on one goal); ``--profile N`` adds a cProfile of N
``create_evaluation_job`` calls per path and the time of each SQL statement they run.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_domain_support import (
    DEFAULT_URL,
    UNSET_ENV,
    CeleryWorker,
    LegacyWorker,
    WorkerProcess,
    clock_offset,
    log,
    machine_info,
    markdown,
    percentile,
    raise_interrupt,
    running,
    throwaway_database,
)

PATHS = ("legacy", "celery")
PHASES = ("create", "batch", "pickup", "throughput")
CHANGED_BY = "bench_domain"
#: The goals of the issue.
GOAL_CREATE_P50_MS = 5.0
GOAL_BATCH_MS = 1000.0
GOAL_PICKUP_P50_MS = 20.0
GOAL_THROUGHPUT_RATIO = 10.0
#: Processes that run jobs: the legacy worker's default, the Celery workers' -c.
LEGACY_SLOTS = 5
CELERY_CONCURRENCY = 2
#: Seconds between polls of the database while waiting (at most ~10 a second).
POLL = 0.1
SLOW_POLL = 0.25

Metrics = dict[str, Any]


# -- the benchmark's state ---------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    url: str
    workdir: Path
    service: Any  # JobService
    db: Any  # psycopg.Connection, autocommit: counting and reading timestamps
    user_id: str
    docs: list[str]
    offset: float  # database clock - our clock (s)
    broker_schema: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    _agents: int = 0

    def agent(self, label: str) -> str:
        """A fresh agent: its evaluations of our documents do not exist yet."""
        from roast_jobs.db.session import transaction
        from roast_jobs.domain.sample_data import create_agent

        self._agents += 1
        with transaction(self.url) as session:
            return create_agent(session, self.user_id, name=f"bench {label} #{self._agents}")

    def set_path(self, path: str) -> None:
        from roast_jobs.service import flags

        flags.rollout(0 if path == "legacy" else 100, CHANGED_BY, self.url)
        self.service.flags.invalidate()
        mode = self.service.flags.current().mode  # read now, not in the first timed call
        want = "off" if path == "legacy" else "on"
        if mode != want:
            raise RuntimeError(f"flags are {mode!r}, wanted {want!r} for the {path} path")

    def scalar(self, sql: str, *params: Any) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def cleanup(self) -> None:
        """No worker runs: cancel what is left waiting and drop its messages, so that the
        next phase's worker starts on an empty queue."""
        cancelled = self.db.execute(
            'UPDATE "Job" SET status = \'CANCELLED\', "cancelledAt" = CURRENT_TIMESTAMP, '
            "\"cancellationReason\" = 'bench_domain: cleanup between phases', "
            "\"updatedAt\" = CURRENT_TIMESTAMP WHERE status IN ('PENDING', 'RUNNING')"
        ).rowcount
        with contextlib.suppress(Exception):  # no broker schema yet: nothing was sent
            self.db.execute(
                f'DELETE FROM "{self.broker_schema}".message '
                "WHERE queue IN ('evaluation', 'batch')"
            )
        if cancelled:
            log(f"cleanup: {cancelled} waiting job(s) cancelled, queues emptied")

    def ping(self, hostname: str) -> bool:
        try:
            replies = self.service.app.control.ping(destination=[hostname], timeout=1.0)
        except Exception:
            return False
        return any(hostname in r for r in replies or [])

    def celery_worker(self, label: str, queues: str) -> CeleryWorker:
        w = CeleryWorker(
            label, self.url, queues, self.log_path(label), self.ping, CELERY_CONCURRENCY
        )
        self.workers.append(w)
        return w

    def legacy_worker(self, label: str) -> LegacyWorker:
        w = LegacyWorker(label, self.url, self.log_path(label))
        self.workers.append(w)
        return w

    def log_path(self, label: str) -> Path:
        return self.workdir / f"{label}-{len(self.workers)}.log"

    def wait(
        self, cond: Callable[[], bool], timeout: float, worker: WorkerProcess | None, every: float
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            if worker is not None:
                worker.check_alive()
            time.sleep(every)
        return cond()


def ms(seconds: float) -> float:
    return seconds * 1000.0


# -- 1. create latency ---------------------------------------------------------------------


def create_latency(b: Bench, round_: int, out: dict[str, Metrics]) -> None:
    n, warm = b.args.create_calls, b.args.create_warmup
    agents = {p: b.agent(f"create {p} r{round_}") for p in PATHS}
    next_doc = dict.fromkeys(PATHS, 0)
    samples: dict[str, list[float]] = {p: [] for p in PATHS}

    def create(path: str) -> float:
        doc = b.docs[next_doc[path]]
        next_doc[path] += 1
        t0 = time.perf_counter()
        job = b.service.create_evaluation_job(doc, agents[path])
        elapsed = time.perf_counter() - t0
        if job.backend != path:
            raise RuntimeError(f"a {path} create made a {job.backend} job")
        return elapsed

    for path in PATHS:
        b.set_path(path)
        for _ in range(warm):
            create(path)
    block = 50
    while any(len(samples[p]) < n for p in PATHS):
        for path in PATHS:
            todo = min(block, n - len(samples[path]))
            if todo <= 0:
                continue
            b.set_path(path)
            samples[path] += [ms(create(path)) for _ in range(todo)]
    for path in PATHS:
        s = samples[path]
        out[path].update(
            create_n=len(s),
            create_p50_ms=percentile(s, 50),
            create_p99_ms=percentile(s, 99),
            create_mean_ms=statistics.fmean(s),
            create_max_ms=max(s),
        )
    b.cleanup()


# -- 2. a batch of 1,000 -------------------------------------------------------------------


def batch_jobs(b: Bench, batch_id: str) -> int:
    return int(b.scalar('SELECT count(*) FROM "Job" WHERE "agentEvalBatchId" = %s', batch_id))


def batch_creation(b: Bench, round_: int, out: dict[str, Metrics]) -> None:
    from roast_jobs.config import get_settings

    n = b.args.batch_size
    docs = b.docs[:n]
    warm_docs = b.docs[: get_settings().batch_inline_max + 1]  # the fan-out path, not inline

    # Legacy path: the call creates every job, chunk by chunk.
    b.set_path("legacy")
    b.service.create_batch_jobs(b.agent(f"batch warm-up legacy r{round_}"), document_ids=warm_docs)
    agent = b.agent(f"batch legacy r{round_}")
    t0 = time.perf_counter()
    created = b.service.create_batch_jobs(agent, document_ids=docs)
    call = time.perf_counter() - t0
    have = batch_jobs(b, created.id)
    if have != n:
        b.errors.append(f"legacy batch: {have}/{n} jobs after the call")
    out["legacy"].update(
        batch_n=n, batch_fan_out=created.fan_out, batch_call_ms=ms(call), batch_all_ms=ms(call)
    )
    b.cleanup()

    # Celery path: the call sends the batch task; a batch worker creates the jobs.
    b.set_path("celery")
    worker = b.celery_worker(f"batch-r{round_}", "batch")
    with running(worker):
        warm = b.service.create_batch_jobs(
            b.agent(f"batch warm-up celery r{round_}"), document_ids=warm_docs
        )
        if not b.wait(lambda: batch_jobs(b, warm.id) >= len(warm_docs), 120, worker, POLL):
            raise TimeoutError("the warm-up batch was not fanned out in 120 s")
        time.sleep(0.5)
        agent = b.agent(f"batch celery r{round_}")
        t_start = time.time()
        t0 = time.perf_counter()
        created = b.service.create_batch_jobs(agent, document_ids=docs)
        call = time.perf_counter() - t0
        if created.fan_out != "task":
            b.errors.append(f"celery batch: fan_out {created.fan_out!r}, expected 'task'")
        done = b.wait(lambda: batch_jobs(b, created.id) >= n, b.args.timeout, worker, POLL)
        seen = time.time() - t_start
        have = batch_jobs(b, created.id)
        all_ms: float | None = None
        how = "polled"
        if done and created.task_id:
            # The task's end (date_done, the worker's clock = ours: same host) is exact;
            # the poll above is up to POLL late.
            result = b.service.app.AsyncResult(created.task_id)
            if b.wait(lambda: result.date_done is not None, 30, worker, POLL):
                done_at = result.date_done
                if done_at.tzinfo is None:
                    from datetime import UTC

                    done_at = done_at.replace(tzinfo=UTC)
                all_ms = ms(done_at.timestamp() - t_start)
                how = "batch task's date_done"
        if all_ms is None and done:
            all_ms = ms(seen)
        if not done:
            b.errors.append(f"celery batch: {have}/{n} jobs after {b.args.timeout:.0f}s")
        backends = b.db.execute(
            'SELECT backend, count(*) FROM "Job" WHERE "agentEvalBatchId" = %s GROUP BY 1',
            (created.id,),
        ).fetchall()
        if dict(backends).get("celery", 0) != have:
            b.errors.append(f"celery batch: backends {dict(backends)}")
        out["celery"].update(
            batch_n=n,
            batch_fan_out=created.fan_out,
            batch_call_ms=ms(call),
            batch_all_ms=all_ms,
            batch_all_how=how,
            batch_jobs=have,
        )
    b.cleanup()


# -- 3. pickup latency ---------------------------------------------------------------------


def pickup(b: Bench, round_: int, path: str, out: Metrics) -> None:
    n, gap = b.args.pickup_jobs, b.args.pickup_gap
    b.set_path(path)
    agent = b.agent(f"pickup {path} r{round_}")
    worker = (
        b.legacy_worker(f"pickup-legacy-r{round_}")
        if path == "legacy"
        else b.celery_worker(f"pickup-celery-r{round_}", "evaluation")
    )

    def ended(ids: list[str]) -> Callable[[], bool]:
        sql = "SELECT count(*) FROM \"Job\" WHERE id = ANY(%s) AND status IN ('PENDING', 'RUNNING')"
        return lambda: b.scalar(sql, ids) == 0

    with running(worker):
        # Warm-up: a few jobs at once, so that every pool process has run one (a Celery
        # child's first task pays for connections and cold caches); then idle.
        warm_agent = b.agent(f"pickup warm-up {path} r{round_}")
        warm = [
            b.service.create_evaluation_job(b.docs[-1 - i], warm_agent).id
            for i in range(b.args.pickup_warmup)
        ]
        if not b.wait(ended(warm), b.args.timeout, worker, SLOW_POLL):
            raise TimeoutError(f"pickup {path}: the warm-up jobs did not end")
        time.sleep(b.args.idle)
        sent: list[tuple[str, float]] = []
        for i in range(n):
            job = b.service.create_evaluation_job(b.docs[i], agent)
            sent.append((job.id, time.time()))  # just after the commit
            time.sleep(gap)
        ids = [j for j, _ in sent]
        if not b.wait(ended(ids), b.args.timeout, worker, SLOW_POLL):
            b.notes.append(f"pickup {path}: not every job ended in {b.args.timeout:.0f}s")
    rows = b.db.execute(
        'SELECT id, extract(epoch FROM "createdAt")::float8, '
        'extract(epoch FROM "startedAt")::float8, extract(epoch FROM "completedAt")::float8 '
        'FROM "Job" WHERE id = ANY(%s)',
        (ids,),
    ).fetchall()
    by_id = {r[0]: (r[1], r[2], r[3]) for r in rows}
    # job id, createdAt, commit (our clock mapped onto the database's), startedAt, completedAt
    jobs = [(j, *by_id[j][:1], c + b.offset, *by_id[j][1:]) for j, c in sent if j in by_id]
    started = [j for j in jobs if j[3] is not None]
    from_created = [ms(j[3] - j[1]) for j in started]
    from_commit = [ms(j[3] - j[2]) for j in started]
    run_times = [ms(j[4] - j[3]) for j in started if j[4] is not None]
    # Jobs created while the worker had a free process and nothing of ours waited: their
    # latency is pickup alone, not queueing behind jobs that are still running.
    slots = LEGACY_SLOTS if path == "legacy" else CELERY_CONCURRENCY
    free: list[float] = []
    for job in started:
        commit = job[2]
        ahead = [o for o in jobs if o is not job and o[2] < commit]
        waiting = any(o[3] is None or o[3] > commit for o in ahead)
        busy = sum(1 for o in ahead if o[3] is not None and o[3] <= commit < (o[4] or 1e18))
        if not waiting and busy < slots:
            free.append(ms(job[3] - job[1]))
    out.update(pickup_n=n, pickup_got=len(from_created), pickup_gap_ms=ms(gap))
    if from_created:
        out.update(
            pickup_p50_ms=percentile(from_created, 50),
            pickup_p99_ms=percentile(from_created, 99),
            pickup_max_ms=max(from_created),
            pickup_commit_p50_ms=percentile(from_commit, 50),
            pickup_commit_p99_ms=percentile(from_commit, 99),
        )
    if run_times:
        out.update(run_p50_ms=percentile(run_times, 50))
    out.update(pickup_free_n=len(free))
    if free:
        out.update(pickup_free_p50_ms=percentile(free, 50))
    if len(from_created) < n:
        b.errors.append(f"pickup {path}: {len(from_created)}/{n} jobs started")
    b.cleanup()


# -- 4. end-to-end throughput ----------------------------------------------------------------


def throughput(b: Bench, round_: int, path: str, out: Metrics) -> None:
    n = b.args.legacy_evaluations if path == "legacy" else b.args.evaluations
    b.set_path(path)
    agent = b.agent(f"throughput {path} r{round_}")
    worker = (
        b.legacy_worker(f"throughput-legacy-r{round_}")
        if path == "legacy"
        else b.celery_worker(f"throughput-celery-r{round_}", "evaluation,batch")
    )
    count_sql = (
        'SELECT count(*) FILTER (WHERE "originalJobId" IS NULL), '
        "count(*) FILTER (WHERE status IN ('PENDING', 'RUNNING')), "
        "count(DISTINCT \"evaluationId\") FILTER (WHERE status = 'COMPLETED'), "
        "count(*) FILTER (WHERE status = 'FAILED'), "
        'extract(epoch FROM max("completedAt"))::float8 '
        'FROM "Job" WHERE "agentEvalBatchId" = %s'
    )
    with running(worker):
        time.sleep(b.args.idle)
        t_start = time.time()
        created = b.service.create_batch_jobs(agent, document_ids=b.docs[:n])
        call = time.time() - t_start
        state: list[Any] = [0, 0, 0, 0, None]

        def finished() -> bool:
            state[:] = b.db.execute(count_sql, (created.id,)).fetchone()
            return state[0] >= n and state[1] == 0

        timed_out = not b.wait(finished, b.args.timeout, worker, SLOW_POLL)
        waited = time.time() - t_start
    _, active, completed, failed, last = state
    elapsed = (last - b.offset - t_start) if last is not None else waited
    if timed_out:
        b.errors.append(
            f"throughput {path}: {completed}/{n} completed in {b.args.timeout:.0f}s "
            f"({active} still waiting or running)"
        )
        elapsed = waited
    if failed:
        b.errors.append(f"throughput {path}: {failed} job(s) FAILED")
    out.update(
        tput_n=n,
        tput_completed=completed,
        tput_failed=failed,
        tput_call_ms=ms(call),
        tput_seconds=elapsed,
        tput_rate=completed / elapsed if elapsed > 0 else None,
        tput_timed_out=timed_out,
    )
    b.cleanup()


# -- profile (--profile) ---------------------------------------------------------------------


def profile_creates(b: Bench, calls: int) -> str:
    """cProfile of ``calls`` create_evaluation_job calls per path, and the time of each
    SQL statement that SQLAlchemy runs (the broker's own inserts show in the profile)."""
    parts = [profile_path(b, path, calls) for path in PATHS]
    b.cleanup()
    return "\n\n".join(parts)


def profile_path(b: Bench, path: str, calls: int) -> str:
    from sqlalchemy import event

    from roast_jobs.db.session import get_engine

    engine = get_engine(b.url)
    b.set_path(path)
    agent = b.agent(f"profile {path}")
    stats: dict[str, list[float]] = {}
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        t0 = started.pop(id(cursor), None)
        if t0 is not None:
            key = " ".join(statement.split())[:110]
            stats.setdefault(key, []).append(ms(time.perf_counter() - t0))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    prof = cProfile.Profile()
    total = 0.0
    try:
        for i in range(calls):
            t0 = time.perf_counter()
            prof.enable()
            b.service.create_evaluation_job(b.docs[-1 - i], agent)
            prof.disable()
            total += time.perf_counter() - t0
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
    rows = sorted(stats.items(), key=lambda kv: -sum(kv[1]))
    table = markdown(
        ["SQL statement (via SQLAlchemy)", "calls/create", "ms/create"],
        [[k, f"{len(v) / calls:.1f}", f"{sum(v) / calls:.2f}"] for k, v in rows[:15]],
    )
    return (
        f"### {path}: {calls} create_evaluation_job calls, {ms(total) / calls:.2f} ms each "
        f"(profiled)\n\n{table}\n\n```\n{buf.getvalue().strip()}\n```"
    )


# -- report ----------------------------------------------------------------------------------


def median_metrics(rounds: list[dict[str, Metrics]]) -> dict[str, Metrics]:
    out: dict[str, Metrics] = {}
    for path in PATHS:
        keys = {k for r in rounds for k in r.get(path, {})}
        merged: Metrics = {}
        for key in sorted(keys):
            values = [r[path][key] for r in rounds if r.get(path, {}).get(key) is not None]
            if not values:
                merged[key] = None
            elif all(isinstance(v, bool) for v in values):
                merged[key] = any(values)
            elif all(isinstance(v, int | float) for v in values):
                merged[key] = statistics.median(values)
            else:
                merged[key] = values[0]
        out[path] = merged
    return out


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 10 else (f"{x:.1f}" if x < 100 else f"{x:,.0f}")


def fmt_count(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 10 else f"{x:,.1f}")


def ratio(celery: float | None, legacy: float | None) -> float | None:
    return celery / legacy if celery is not None and legacy else None


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else (f"{x:.3f}x" if x < 0.1 else f"{x:.2f}x")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def results_table(m: dict[str, Metrics], args: argparse.Namespace) -> str:
    lg, cl = m["legacy"], m["celery"]
    rows: list[list[str]] = []

    def add(
        metric: str,
        key: str,
        fmt: Callable[[float | None], str] = fmt_ms,
        goal: str = "-",
        ok: Callable[[float | None, float | None], bool | None] | None = None,
        compare: bool = True,
    ) -> None:
        a, c = lg.get(key), cl.get(key)
        rows.append(
            [
                metric,
                fmt(a),
                fmt(c),
                fmt_ratio(ratio(c, a)) if compare else "-",
                goal,
                verdict(ok(a, c) if ok else None),
            ]
        )

    def at_most(limit: float) -> Callable[[float | None, float | None], bool | None]:
        return lambda _a, c: None if c is None else c <= limit

    n_create = f"{args.create_calls} calls after {args.create_warmup} warm-up, no worker"
    add(
        f"1. create_evaluation_job p50 (ms), {n_create}",
        "create_p50_ms",
        goal=f"celery <= {GOAL_CREATE_P50_MS:g} ms",
        ok=at_most(GOAL_CREATE_P50_MS),
    )
    add("1. create_evaluation_job p99 (ms)", "create_p99_ms")
    add("1. create_evaluation_job mean (ms)", "create_mean_ms")
    add(
        f"2. create_batch_jobs({args.batch_size:,} docs): the call (ms)",
        "batch_call_ms",
        goal=f"celery <= {GOAL_BATCH_MS:,.0f} ms",
        ok=at_most(GOAL_BATCH_MS),
    )
    add(
        f"2. ... until all {args.batch_size:,} jobs exist, with their messages (ms)",
        "batch_all_ms",
        goal=f"celery <= {GOAL_BATCH_MS:,.0f} ms",
        ok=at_most(GOAL_BATCH_MS),
    )
    gap = (
        f"{args.pickup_jobs} jobs {ms(args.pickup_gap):.0f} ms apart, idle worker warmed up "
        f"by {args.pickup_warmup} jobs"
    )
    add(
        f"3. pickup p50, createdAt -> startedAt (ms), {gap}",
        "pickup_p50_ms",
        goal=f"celery <= {GOAL_PICKUP_P50_MS:g} ms",
        ok=at_most(GOAL_PICKUP_P50_MS),
    )
    add("3. pickup p99, createdAt -> startedAt (ms)", "pickup_p99_ms")
    add("3. pickup max, createdAt -> startedAt (ms)", "pickup_max_ms")
    add("3. pickup p50, client commit -> startedAt (ms)", "pickup_commit_p50_ms")
    add("3. pickup p99, client commit -> startedAt (ms)", "pickup_commit_p99_ms")
    add(
        "3. pickup p50 (ms), only jobs created while a process was free (n below)",
        "pickup_free_p50_ms",
    )
    add("3. ... n of those jobs", "pickup_free_n", fmt_count, compare=False)
    add("3. job run time p50, startedAt -> completedAt (ms)", "run_p50_ms")

    def tput_cell(x: Metrics) -> str:
        if x.get("tput_rate") is None:
            return "-"
        text = (
            f"{fmt_rate(x['tput_rate'])}/s (N={x['tput_n']:.0f}: "
            f"{x['tput_completed']:.0f} in {x['tput_seconds']:.1f}s)"
        )
        return text + (" TIMED OUT" if x.get("tput_timed_out") else "")

    t_ratio = ratio(cl.get("tput_rate"), lg.get("tput_rate"))
    rows.append([
        "4. end-to-end throughput, create batch -> all COMPLETED (evaluations/s)",
        tput_cell(lg), tput_cell(cl), fmt_ratio(t_ratio),
        f"celery >= {GOAL_THROUGHPUT_RATIO:g}x legacy",
        verdict(None if t_ratio is None else t_ratio >= GOAL_THROUGHPUT_RATIO),
    ])  # fmt: skip
    add("4. ... of which the create_batch_jobs call (ms)", "tput_call_ms")
    return markdown(["metric", "legacy", "celery", "celery/legacy", "goal", "met?"], rows)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--database-url",
        default=None,
        help="a server to create the throwaway database on "
        f"[default: $DATABASE_URL or {DEFAULT_URL}]",
    )
    p.add_argument("--create-calls", type=int, default=500, help="timed creates per path")
    p.add_argument("--create-warmup", type=int, default=50, help="untimed creates per path")
    p.add_argument("--batch-size", type=int, default=1000, help="documents of the batch")
    p.add_argument("--pickup-jobs", type=int, default=100)
    p.add_argument("--pickup-gap", type=float, default=0.05, help="seconds between creates")
    p.add_argument(
        "--pickup-warmup", type=int, default=6, help="jobs run before the pickup measurement"
    )
    p.add_argument("--evaluations", type=int, default=2000, help="N end to end, Celery")
    p.add_argument(
        "--legacy-evaluations", type=int, default=300, help="N end to end, legacy worker"
    )
    p.add_argument("--idle", type=float, default=1.0, help="seconds a ready worker idles")
    p.add_argument("--rounds", type=int, default=1, help="repeat; the table shows medians")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per wait")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also cProfile N create_evaluation_job calls per path and time their SQL",
    )
    p.add_argument(
        "--phases",
        default=",".join(PHASES),
        help="comma-separated subset of %(default)s (to work on one goal)",
    )
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="raw numbers")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker logs")
    p.add_argument("--quick", action="store_true", help="a smoke run with small numbers")
    args = p.parse_args(argv)
    args.database_url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_URL
    if args.quick:
        args.create_calls, args.create_warmup = 30, 5
        args.batch_size, args.pickup_jobs = 150, 10
        args.evaluations, args.legacy_evaluations = 60, 15
        args.idle = 0.5
        args.timeout = min(args.timeout, 120.0)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not args.phases or set(args.phases) - set(PHASES):
        p.error(f"--phases: choose from {','.join(PHASES)}")
    numbers = (args.create_calls, args.batch_size, args.pickup_jobs, args.evaluations,
               args.legacy_evaluations, args.rounds)  # fmt: skip
    if min(numbers) < 1 or args.create_warmup < 0:
        p.error("counts and --rounds must be >= 1")
    return args


def check_evaluator() -> None:
    """The workers' evaluator must work: one evaluation here, before anything starts."""
    from roast_jobs.domain.evaluator import AgentInput, DocumentInput, load_evaluator
    from roast_jobs.domain.sample_data import sample_text

    title, content = sample_text(0)
    try:
        load_evaluator().evaluate(
            DocumentInput("check", 1, title, content), AgentInput("check", 1, "check")
        )
    except Exception as exc:
        raise RuntimeError(
            f"the evaluator fails here, so it would in the workers: {exc!r}"
        ) from exc


def run(
    args: argparse.Namespace, url: str, workdir: Path
) -> tuple[list[dict[str, Metrics]], Bench]:
    import psycopg

    from roast_jobs.config import get_settings, override_settings
    from roast_jobs.db.session import transaction
    from roast_jobs.domain.sample_data import create_documents, create_user
    from roast_jobs.service.job_service import JobService

    os.environ["DATABASE_URL"] = url
    override_settings(database_url=url, use_celery=None, celery_rollout_percent=None)
    check_evaluator()
    offset, rtt = clock_offset(url)
    n_docs = max(
        args.create_calls + args.create_warmup,
        args.batch_size,
        args.pickup_jobs,
        args.evaluations,
        args.legacy_evaluations,
        args.profile + 1,
    )
    with transaction(url) as session:
        user = create_user(session, "bench")
        docs = create_documents(session, user, n_docs, seed=1)
    log(f"{n_docs} documents created; database clock - ours = {ms(offset):+.2f} ms "
        f"(round trip {ms(rtt):.2f} ms)")  # fmt: skip
    service = JobService(url)
    db = psycopg.connect(url, autocommit=True)
    bench = Bench(
        args=args, url=url, workdir=workdir, service=service, db=db, user_id=user, docs=docs,
        offset=offset, broker_schema=get_settings().broker_schema,
    )  # fmt: skip
    rounds: list[dict[str, Metrics]] = []
    try:
        for round_ in range(1, args.rounds + 1):
            out: dict[str, Metrics] = {p: {} for p in PATHS}
            rounds.append(out)
            steps: list[tuple[str, str, Callable[[], None]]] = [
                ("create", "create latency", lambda r=round_, o=out: create_latency(bench, r, o)),
                ("batch", "batch creation", lambda r=round_, o=out: batch_creation(bench, r, o)),
                *(
                    ("pickup", f"pickup {p}",
                     lambda r=round_, o=out, p=p: pickup(bench, r, p, o[p]))
                    for p in PATHS
                ),
                *(
                    ("throughput", f"throughput {p}",
                     lambda r=round_, o=out, p=p: throughput(bench, r, p, o[p]))
                    for p in PATHS
                ),
            ]  # fmt: skip
            print(f"== round {round_}/{args.rounds}", file=sys.stderr, flush=True)
            for phase, name, step in steps:
                if phase not in args.phases:
                    continue
                log(f"{name} ...")
                t0 = time.monotonic()
                try:
                    step()
                except Exception as exc:
                    bench.errors.append(
                        f"round {round_}, {name}: {type(exc).__name__}: {exc}"[:2000]
                    )
                    log(f"{name} FAILED: {exc!r}")
                    with contextlib.suppress(Exception):
                        bench.cleanup()
                log(f"{name} done in {time.monotonic() - t0:.1f}s")
        if args.profile:
            log(f"profile: {args.profile} creates per path ...")
            bench.notes.append(profile_creates(bench, args.profile))
    finally:
        service.close()
        with contextlib.suppress(Exception):
            service.app.close()
        db.close()
    for w in bench.workers:
        bad = w.error_lines()
        if bad:
            bench.errors.append(f"{w.log_path.name}: {len(bad)} error line(s), e.g. {bad[0][:300]}")
    return rounds, bench


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, raise_interrupt)
    overridden = [k for k in UNSET_ENV if k in os.environ]
    for key in overridden:  # see UNSET_ENV: defaults only, here and in the workers
        del os.environ[key]
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    header = [f"command: {command}", *machine_info(args.database_url)]
    if overridden:
        header.append(f"ignored from the environment: {', '.join(overridden)}")
    for line in header:
        print(line, file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-domain-"))
    rounds: list[dict[str, Metrics]] = []
    bench: Bench | None = None
    finished = False
    try:
        with throwaway_database(args.database_url) as url:
            rounds, bench = run(args, url, workdir)
        finished = True
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        failed = not finished or bench is None or bool(bench.errors)
        if args.keep_logs or failed:
            print(f"worker logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    assert bench is not None
    medians = median_metrics(rounds)
    wall = time.monotonic() - started
    print()
    for line in header:
        print(line)
    print(
        f"rounds: {args.rounds} (the table shows medians); total run time {wall:.0f}s; "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(results_table(medians, args))
    print()
    print(
        "celery/legacy: the Celery path's number over the legacy one's (below 1 is faster "
        "for times, above 1 is faster for rates). Legacy worker: `roast-jobs legacy-worker` "
        "with its defaults (poll 1 s, 5 processes at once); Celery: `celery -A "
        "roast_jobs.tasks.worker worker -P prefork -c 2 -l WARNING --without-gossip "
        "--without-mingle`, -Q batch (2), -Q evaluation (3), -Q evaluation,batch (4); "
        "offline evaluator. Fan-out end (2): "
        + str(medians["celery"].get("batch_all_how", "-"))
        + "."
    )
    for note in bench.notes:
        print()
        print(note)
    if bench.errors:
        print()
        print("errors:")
        for err in bench.errors:
            print(f"- {err}")
    if args.json:
        payload = {
            "command": command,
            "header": header,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "wall_seconds": wall,
            "rounds": rounds,
            "median": medians,
            "goals": {
                "create_p50_ms_max": GOAL_CREATE_P50_MS,
                "batch_ms_max": GOAL_BATCH_MS,
                "pickup_p50_ms_max": GOAL_PICKUP_P50_MS,
                "throughput_ratio_min": GOAL_THROUGHPUT_RATIO,
            },
            "errors": bench.errors,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nraw numbers written to {args.json}")
    return 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
