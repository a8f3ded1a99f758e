#!/usr/bin/env python
"""Time the migrator (``roast_jobs.migrator.migrate``) both ways on N waiting legacy jobs,
next to ``JobManager.send_many``'s raw rate on the same server.

Run from the repository root:

    .venv/bin/python scripts/bench_migrate.py [--database-url URL] [--jobs N]
        [--batch-size B] [--rounds R] [--json FILE] [--quick]

One run, on a scratch database it creates (``rj_bench_<random>`` on the server of
``--database-url`` / $DATABASE_URL, migrated, dropped at the end even on an error,
Ctrl-C or SIGTERM):

1. setup: a user, ``--documents`` documents and ``--agents`` agents (sample_data), one
   evaluation per (document, agent) (``upsert_evaluations``), then N PENDING legacy
   ``Job`` rows in one ``INSERT ... SELECT`` (round robin over the evaluations, a
   distinct ``createdAt`` each, 1 ms apart), then ``VACUUM ANALYZE``;
2. per round, ``send_many`` raw: N evaluation messages (the payload of a moved job)
   sent with ``JobManager.send_many(EVALUATION_TASK, [TaskCall(kwargs=...)], queue=
   "evaluation", soft_time_limit=..., time_limit=...)`` in chunks of B, one transaction
   per chunk (as the migrator's batches); the calls of a chunk are built before its
   clock starts; the manager is warmed up once (100 messages) at setup. Then the
   messages are deleted and the tables ``VACUUM ANALYZE``d;
3. per round, ``migrate(LEGACY_TO_CELERY, url, batch_size=B)`` end to end (a fresh
   ``JobService``, as a plain ``migrate`` call makes, closed inside the clock), checked
   (N moved, N messages, N ledger records, no PENDING legacy left), ``VACUUM ANALYZE``,
   then ``migrate(CELERY_TO_LEGACY, ...)``, checked (N back, 0 messages, 2N records),
   ``VACUUM ANALYZE``. ``JobMigrationStatus`` is emptied at the start of each round, so
   that every round starts from the same state;
4. per round, for comparison, ``send_many`` raw again with all N in one call (as
   ``bench_broker.py`` measures it), purged and ``VACUUM ANALYZE``d.

The forward/raw ratios are the median of each round's ratio. The goals are the issue's:
each direction under 20 s, forward at least half of ``send_many``'s raw rate (judged
against both raw figures).

Autovacuum is off on the development server: between phases the benchmark runs the
``VACUUM ANALYZE`` that autovacuum would run on a real server (outside the clocks).
The breakdown comes from SQLAlchemy cursor events (time of each migrator statement) and
the time spent in ``JobService.send_evaluations`` (the migrator's ``send_many``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_domain_support import (
    DEFAULT_URL,
    UNSET_ENV,
    log,
    machine_info,
    markdown,
    raise_interrupt,
    throwaway_database,
)

#: The issue's goals.
GOAL_SECONDS = 20.0
GOAL_RAW_RATIO = 0.5
WARMUP_MESSAGES = 100
QUEUE = "evaluation"

Metrics = dict[str, float]

#: Statements of a migrator run, recognised by a piece of their text (roast_jobs/migrator/
#: sql.py and broker/sql/jobs.py); the first match wins.
STATEMENTS: list[tuple[str, str]] = [
    ("forward_batch", "WITH picked AS MATERIALIZED"),
    ("reverse_pick", '("createdAt", id) > ('),
    ("messages_for_move", "mine AS MATERIALIZED"),
    ("delete_messages", ".message WHERE id = ANY("),
    ("reverse_move", "SET backend = 'legacy'"),
    ("waiting_count", 'SELECT count(*) FROM "Job" WHERE status'),
    ("celery_active", "status IN ('PENDING', 'RUNNING')"),
]


# -- timing the migrator's pieces -----------------------------------------------------------


class StatementTimer:
    """Seconds and count per statement label, from SQLAlchemy's cursor events (every
    engine of the process). Statements run inside ``send_evaluations`` are counted there,
    not here (see ``TimedJobService``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.paused = False
        self.installed = False

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        self.installed = True

    def uninstall(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        if self.installed:
            event.remove(Engine, "before_cursor_execute", self._before)
            event.remove(Engine, "after_cursor_execute", self._after)
            self.installed = False

    def reset(self) -> None:
        self.seconds = {}
        self.counts = {}

    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        t0 = conn.info.pop("bench_t0", None)
        if t0 is None or self.paused:
            return
        label = next((name for name, mark in STATEMENTS if mark in statement), "other_sql")
        self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
        self.counts[label] = self.counts.get(label, 0) + 1


def timed_service_class() -> type:
    """``JobService`` that times ``send_evaluations`` (the migrator's ``send_many``)."""
    from roast_jobs.service.job_service import JobService

    class TimedJobService(JobService):
        timer: StatementTimer | None = None
        send_seconds: float = 0.0
        send_calls: int = 0

        def send_evaluations(self, session: Any, jobs: Sequence[Any]) -> None:
            timer = self.timer
            if timer is not None:
                timer.paused = True
            t0 = time.perf_counter()
            try:
                super().send_evaluations(session, jobs)
            finally:
                self.send_seconds += time.perf_counter() - t0
                self.send_calls += 1
                if timer is not None:
                    timer.paused = False

    return TimedJobService


# -- the benchmark's state ---------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    url: str
    db: Any  # psycopg.Connection, autocommit: counts, purges, VACUUM
    schema: str  # the broker's schema
    evaluations: list[str]
    raw_service: Any  # JobService: its manager does the raw sends
    soft_limit: float
    hard_limit: float
    timer: StatementTimer = field(default_factory=StatementTimer)
    errors: list[str] = field(default_factory=list)
    rss_marks: list[tuple[str, float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.args.jobs)

    def scalar(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        row = self.db.execute(sql, params).fetchone()
        assert row is not None
        return row[0]

    def vacuum(self) -> float:
        """What autovacuum would do after the churn (it is off on this server)."""
        t0 = time.perf_counter()
        for table in ('"Job"', '"JobMigrationStatus"', f'"{self.schema}".message'):
            self.db.execute(f"VACUUM ANALYZE {table}")
        return time.perf_counter() - t0

    def mark_rss(self, label: str) -> None:
        self.rss_marks.append((label, peak_rss_mb()))


def peak_rss_mb() -> float:
    # Linux: kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- setup ---------------------------------------------------------------------------------

_INSERT_JOBS = """
WITH ev AS (
    SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM "Evaluation"
), t AS (
    SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)
           - make_interval(secs => %(n)s / 1000.0 + 60) AS t0
)
INSERT INTO "Job" (id, status, attempts, "evaluationId", backend, "createdAt", "updatedAt")
SELECT gen_random_uuid()::text, 'PENDING', 0, ev.id, 'legacy',
       t.t0 + i * interval '1 millisecond', t.t0 + i * interval '1 millisecond'
  FROM generate_series(0, %(n)s - 1) AS i
  JOIN ev ON ev.k = i %% %(evals)s
 CROSS JOIN t
"""


def populate(args: argparse.Namespace, url: str, db: Any) -> list[str]:
    """User, documents, agents, evaluations, N PENDING legacy jobs; the evaluation ids."""
    from roast_jobs.db.session import transaction
    from roast_jobs.domain.evaluations import upsert_evaluations
    from roast_jobs.domain.sample_data import create_agent, create_documents, create_user

    t0 = time.perf_counter()
    evaluations: list[str] = []
    with transaction(url) as session:
        user = create_user(session, "bench-migrate")
        docs = create_documents(session, user, args.documents, seed=1)
        for i in range(args.agents):
            agent = create_agent(session, user, name=f"bench migrate agent {i}")
            evaluations.extend(upsert_evaluations(session, docs, agent).values())
    t1 = time.perf_counter()
    db.execute(_INSERT_JOBS, {"n": args.jobs, "evals": len(evaluations)})
    t2 = time.perf_counter()
    count, distinct = db.execute(
        'SELECT count(*), count(DISTINCT "createdAt") FROM "Job" '
        "WHERE status = 'PENDING' AND backend = 'legacy'"
    ).fetchone()
    if count != args.jobs or distinct != args.jobs:
        raise RuntimeError(f"setup: {count} PENDING legacy jobs, {distinct} distinct createdAt")
    db.execute("VACUUM ANALYZE")
    log(
        f"setup: {args.documents:,} documents, {args.agents} agents, {len(evaluations):,} "
        f"evaluations in {t1 - t0:.1f}s; {args.jobs:,} PENDING legacy jobs in "
        f"{t2 - t1:.1f}s (one INSERT ... SELECT); VACUUM ANALYZE in "
        f"{time.perf_counter() - t2:.1f}s"
    )
    return evaluations


def eval_options(bench: Bench) -> dict[str, Any]:
    return {"queue": QUEUE, "soft_time_limit": bench.soft_limit, "time_limit": bench.hard_limit}


def warm_up(bench: Bench) -> None:
    """The raw sender's Celery app, template and connections, before any clock."""
    from roast_jobs.jobs import TaskCall
    from roast_jobs.service.job_service import EVALUATION_TASK

    calls = [TaskCall(kwargs=payload(bench, i)) for i in range(WARMUP_MESSAGES)]
    bench.raw_service.manager.send_many(EVALUATION_TASK, calls, **eval_options(bench))
    purge(bench)


def payload(bench: Bench, i: int) -> dict[str, Any]:
    """What a moved job's message carries (JobService._payload), with a fresh job id."""
    return {
        "job_id": str(uuid.uuid4()),
        "evaluation_id": bench.evaluations[i % len(bench.evaluations)],
        "agent_eval_batch_id": None,
    }


def purge(bench: Bench) -> int:
    cur = bench.db.execute(f'DELETE FROM "{bench.schema}".message WHERE queue = %s', (QUEUE,))
    return int(cur.rowcount)


# -- the phases ----------------------------------------------------------------------------


def raw_send(bench: Bench, out: Metrics, chunk: int, prefix: str) -> None:
    """N messages by ``send_many``, ``chunk`` per call (one transaction per call); the
    clock runs around the calls only."""
    from roast_jobs.jobs import TaskCall
    from roast_jobs.service.job_service import EVALUATION_TASK

    manager = bench.raw_service.manager
    options = eval_options(bench)
    n = bench.n
    seconds = 0.0
    created = 0
    for start in range(0, n, chunk):
        calls = [TaskCall(kwargs=payload(bench, i)) for i in range(start, min(n, start + chunk))]
        t0 = time.perf_counter()
        published = manager.send_many(EVALUATION_TASK, calls, **options)
        seconds += time.perf_counter() - t0
        created += sum(1 for p in published if p.created)
        del calls, published
    stored = bench.scalar(
        f'SELECT count(*) FROM "{bench.schema}".message WHERE queue = %s', (QUEUE,)
    )
    if created != n or stored != n:
        bench.errors.append(f"send_many raw ({chunk:,} per call): {created} created, "
                            f"{stored} stored of {n}")  # fmt: skip
    out[f"{prefix}_seconds"] = seconds
    out[f"{prefix}_rate"] = n / seconds
    purged = purge(bench)
    out[f"{prefix}_vacuum_s"] = bench.vacuum()
    log(
        f"send_many raw, {chunk:,} per call: {n:,} in {seconds:.2f}s = {n / seconds:,.0f} "
        f"msg/s; {purged:,} purged; VACUUM ANALYZE {out[f'{prefix}_vacuum_s']:.1f}s"
    )


def run_migration(
    bench: Bench, direction: Any, prefix: str, out: Metrics, parallel: int = 1
) -> Any:
    """One ``migrate`` call, end to end (its service made and closed inside the clock)."""
    from roast_jobs.migrator import migrate

    marks: list[float] = []
    cls = timed_service_class()
    bench.timer.reset()
    t0 = time.perf_counter()
    service = cls(bench.url)
    service.timer = bench.timer
    try:
        summary = migrate(
            direction,
            bench.url,
            batch_size=bench.args.batch_size,
            service=service,
            parallel=parallel,
            progress=lambda _s, _seen: marks.append(time.perf_counter()),
        )
    finally:
        service.close()
        wall = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            service.app.close()
    batches = [b - a for a, b in zip([t0, *marks], marks, strict=False)]
    seconds = dict(bench.timer.seconds)
    out[f"{prefix}_seconds"] = wall
    out[f"{prefix}_rate"] = summary.moved / wall if wall > 0 else 0.0
    out[f"{prefix}_summary_seconds"] = summary.seconds
    out[f"{prefix}_moved"] = summary.moved
    out[f"{prefix}_batches"] = summary.batches
    out[f"{prefix}_batch_p50_ms"] = statistics.median(batches) * 1000 if batches else 0.0
    out[f"{prefix}_batch_max_ms"] = max(batches) * 1000 if batches else 0.0
    out[f"{prefix}_first_batch_ms"] = batches[0] * 1000 if batches else 0.0
    out[f"{prefix}_send_s"] = service.send_seconds
    for label, _mark in [*STATEMENTS, ("other_sql", "")]:
        out[f"{prefix}_sql_{label}_s"] = seconds.get(label, 0.0)
    accounted = service.send_seconds + sum(seconds.values())
    out[f"{prefix}_rest_s"] = wall - accounted
    if summary.skipped:
        bench.errors.append(f"{direction}: skipped {summary.skipped}")
    log(
        f"{direction}: {summary.moved:,} moved in {wall:.2f}s = {out[f'{prefix}_rate']:,.0f} "
        f"jobs/s ({summary.batches} batches; send_many {service.send_seconds:.2f}s, SQL "
        + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(seconds.items()))
        + ")"
    )
    return summary


def job_counts(bench: Bench) -> dict[str, int]:
    row = bench.db.execute(
        "SELECT count(*) FILTER (WHERE status = 'PENDING' AND backend = 'legacy'), "
        "count(*) FILTER (WHERE status = 'PENDING' AND backend = 'celery'), "
        "count(*) FILTER (WHERE status <> 'PENDING'), "
        'count(*) FILTER (WHERE "brokerJobId" IS NOT NULL) FROM "Job"'
    ).fetchone()
    assert row is not None
    messages = bench.scalar(f'SELECT count(*) FROM "{bench.schema}".message')
    return {
        "pending_legacy": row[0],
        "pending_celery": row[1],
        "not_pending": row[2],
        "with_task_id": row[3],
        "messages": messages,
    }


def ledger(bench: Bench, run_id: str | None, source: str) -> tuple[int, int]:
    """(all JobMigrationStatus rows, rows of ``run_id`` that moved a job from ``source``)."""
    row = bench.db.execute(
        'SELECT count(*), count(*) FILTER (WHERE "runId" = %s AND status = %s '
        'AND "fromBackend" = %s) FROM "JobMigrationStatus"',
        (run_id, "moved", source),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def check(bench: Bench, what: str, got: dict[str, int], want: dict[str, int]) -> bool:
    bad = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if bad:
        shown = ", ".join(f"{k}: {g} (want {w})" for k, (g, w) in bad.items())
        bench.errors.append(f"{what}: {shown}")
        log(f"{what} check FAILED: {shown}")
        return False
    return True


def forward(
    bench: Bench, out: Metrics, prefix: str = "fwd", parallel: int = 1, before: int = 0
) -> bool:
    """A forward run, checked; ``before``: ledger rows already there."""
    from roast_jobs.migrator import Direction

    n = bench.n
    summary = run_migration(bench, Direction.LEGACY_TO_CELERY, prefix, out, parallel)
    got = job_counts(bench)
    got["moved"] = summary.moved
    got["records"], got["records_of_run"] = ledger(bench, summary.run_id, "legacy")
    got["messages_of_moved_jobs"] = bench.scalar(
        f'SELECT count(*) FROM "Job" j JOIN "{bench.schema}".message m '
        "ON m.task_id = j.\"brokerJobId\" WHERE j.backend = 'celery' AND j.status = 'PENDING'"
    )
    ok = check(
        bench,
        "forward",
        got,
        {
            "moved": n, "pending_legacy": 0, "pending_celery": n, "not_pending": 0,
            "messages": n, "messages_of_moved_jobs": n, "records": before + n,
            "records_of_run": n,
        },
    )  # fmt: skip
    out[f"{prefix}_vacuum_s"] = bench.vacuum()
    return ok


def reverse(bench: Bench, out: Metrics, prefix: str = "rev", before: int = 0) -> bool:
    from roast_jobs.migrator import Direction

    n = bench.n
    summary = run_migration(bench, Direction.CELERY_TO_LEGACY, prefix, out)
    got = job_counts(bench)
    got["moved"] = summary.moved
    got["records"], got["records_of_run"] = ledger(bench, summary.run_id, "celery")
    ok = check(
        bench,
        "reverse",
        got,
        {
            "moved": n, "pending_legacy": n, "pending_celery": 0, "not_pending": 0,
            "with_task_id": 0, "messages": 0, "records": before + n, "records_of_run": n,
        },
    )  # fmt: skip
    out[f"{prefix}_vacuum_s"] = bench.vacuum()
    return ok


def one_round(bench: Bench, round_: int) -> tuple[Metrics, bool]:
    out: Metrics = {}
    bench.db.execute('TRUNCATE "JobMigrationStatus"')
    bench.vacuum()
    log(f"round {round_}: send_many raw ...")
    raw_send(bench, out, bench.args.batch_size, "raw")
    if round_ == 1:
        bench.mark_rss("after the first send_many raw")
    log(f"round {round_}: forward ...")
    ok = forward(bench, out)
    if round_ == 1:
        bench.mark_rss("after the first forward run")
    if ok:
        log(f"round {round_}: reverse ...")
        ok = reverse(bench, out, before=bench.n)
        if round_ == 1:
            bench.mark_rss("after the first reverse run")
    if ok and bench.args.parallel > 1:
        log(f"round {round_}: forward --parallel {bench.args.parallel} ...")
        ok = forward(bench, out, "fwdp", bench.args.parallel, before=2 * bench.n)
        ok = ok and reverse(bench, out, "revp", before=3 * bench.n)
    if ok:
        # For comparison: the whole send in one call, as bench_broker.py measures it.
        raw_send(bench, out, bench.n, "raw1")
        if round_ == 1:
            bench.mark_rss(f"after the first one-call send_many of {bench.n:,}")
    return out, ok


# -- the tables ----------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def median_of(rounds: list[Metrics], key: str) -> float | None:
    values = [r[key] for r in rounds if key in r]
    return statistics.median(values) if values else None


def results_table(rounds: list[Metrics], args: argparse.Namespace) -> str:
    n, b = args.jobs, args.batch_size
    rows: list[list[str]] = []

    def add(metric: str, cell: Callable[[Metrics], str], med: str) -> None:
        rows.append([metric, med, *(cell(r) for r in rounds)])

    def rate_row(metric: str, key: str) -> None:
        add(metric, lambda r: fmt_rate(r.get(key)), fmt_rate(median_of(rounds, key)))

    def sec_rate(prefix: str) -> Callable[[Metrics], str]:
        return lambda r: (
            f"{fmt_s(r.get(prefix + '_seconds'))} s / {fmt_rate(r.get(prefix + '_rate'))}"
            if prefix + "_seconds" in r
            else "-"
        )

    def sec_rate_median(prefix: str) -> str:
        s, x = median_of(rounds, prefix + "_seconds"), median_of(rounds, prefix + "_rate")
        return "-" if s is None else f"{fmt_s(s)} s / {fmt_rate(x)}"

    def sec_row(metric: str, key: str) -> None:
        add(metric, lambda r: fmt_s(r.get(key)), fmt_s(median_of(rounds, key)))

    def ms_row(metric: str, key: str) -> None:
        add(metric, lambda r: fmt_rate(r.get(key)), fmt_rate(median_of(rounds, key)))

    def ratio_row(metric: str, raw_key: str) -> None:
        med = median_ratio(rounds, raw_key)
        add(
            metric,
            lambda r: "-" if ratio(r, raw_key) is None else f"{ratio(r, raw_key):.2f}",
            "-" if med is None else f"{med:.2f}",
        )

    rate_row(f"send_many raw (msg/s), {n:,} in calls of {b:,}", "raw_rate")
    sec_row("send_many raw: seconds", "raw_seconds")
    add(f"forward legacy->celery: seconds for {n:,} / jobs/s", sec_rate("fwd"),
        sec_rate_median("fwd"))  # fmt: skip
    add(f"reverse celery->legacy: seconds for {n:,} / jobs/s", sec_rate("rev"),
        sec_rate_median("rev"))  # fmt: skip
    ratio_row("forward / send_many raw ratio", "raw_rate")
    if args.parallel > 1:
        add(
            f"forward, --parallel {args.parallel}: seconds for {n:,} / jobs/s",
            sec_rate("fwdp"),
            sec_rate_median("fwdp"),
        )
        ratio_row(f"forward (--parallel {args.parallel}) / send_many raw ratio", "raw_rate|fwdp")
    rate_row(f"for comparison: send_many raw, one call of {n:,} (msg/s)", "raw1_rate")
    ratio_row("forward / send_many raw (one call) ratio", "raw1_rate")
    # The breakdown.
    for prefix, name in (("fwd", "forward"), ("rev", "reverse")):
        ms_row(f"{name}: batches of {b:,}, p50 (ms)", f"{prefix}_batch_p50_ms")
        ms_row(f"{name}: slowest batch (ms)", f"{prefix}_batch_max_ms")
        ms_row(f"{name}: first batch, with the service's start (ms)", f"{prefix}_first_batch_ms")
    sec_row("forward: FORWARD_BATCH statement (s)", "fwd_sql_forward_batch_s")
    sec_row("forward: send_evaluations -> send_many in the batch (s)", "fwd_send_s")
    sec_row("forward: waiting counts + other SQL (s)", "fwd_small_sql_s")
    sec_row("forward: rest: commits, sessions, Python (s)", "fwd_rest_s")
    sec_row("reverse: REVERSE_PICK statement (s)", "rev_sql_reverse_pick_s")
    sec_row("reverse: messages_for_move (s)", "rev_sql_messages_for_move_s")
    sec_row("reverse: delete_messages (s)", "rev_sql_delete_messages_s")
    sec_row("reverse: REVERSE_MOVE statement (s)", "rev_sql_reverse_move_s")
    sec_row("reverse: waiting counts + other SQL (s)", "rev_small_sql_s")
    sec_row("reverse: rest: commits, sessions, Python (s)", "rev_rest_s")
    sec_row("VACUUM ANALYZE after send_many / forward / reverse (s, untimed)", "vacuum_total_s")
    return markdown(["metric", "median", *(f"round {i + 1}" for i in range(len(rounds)))], rows)


def ratio(r: Metrics, raw_key: str) -> float | None:
    """forward / raw; ``raw_key`` "raw_rate|fwdp" takes the forward of prefix fwdp."""
    raw_key, _, prefix = raw_key.partition("|")
    f, raw = r.get(f"{prefix or 'fwd'}_rate"), r.get(raw_key)
    return f / raw if f is not None and raw else None


def median_ratio(rounds: list[Metrics], raw_key: str) -> float | None:
    """The median of each round's forward / raw (both measured minutes apart)."""
    ratios = [x for x in (ratio(r, raw_key) for r in rounds) if x is not None]
    return statistics.median(ratios) if ratios else None


def goals_table(rounds: list[Metrics], complete: bool, batch_size: int, parallel: int = 1) -> str:
    fwd_s, rev_s = median_of(rounds, "fwd_seconds"), median_of(rounds, "rev_seconds")
    fwd = median_of(rounds, "fwd_rate")

    def verdict(ok: bool | None) -> str:
        if ok is None:
            return "n/a"
        return ("PASS" if ok else "FAIL") + ("" if complete else " (checks failed)")

    rows = [
        [
            f"forward legacy->celery < {GOAL_SECONDS:g} s",
            "-" if fwd_s is None else f"{fwd_s:.2f} s",
            verdict(None if fwd_s is None else fwd_s < GOAL_SECONDS),
        ],
        [
            f"reverse celery->legacy < {GOAL_SECONDS:g} s",
            "-" if rev_s is None else f"{rev_s:.2f} s",
            verdict(None if rev_s is None else rev_s < GOAL_SECONDS),
        ],
    ]
    for raw_key, how in (("raw_rate", f"{batch_size:,} per call"), ("raw1_rate", "one call")):
        x, raw = median_ratio(rounds, raw_key), median_of(rounds, raw_key)
        rows.append(
            [
                f"forward >= {GOAL_RAW_RATIO:g} x send_many raw ({how})",
                "-" if x is None else f"{x:.2f}x ({fmt_rate(fwd)} vs {fmt_rate(raw)} jobs/s)",
                verdict(None if x is None else x >= GOAL_RAW_RATIO),
            ]
        )
    if parallel > 1:
        x, raw = median_ratio(rounds, "raw_rate|fwdp"), median_of(rounds, "raw_rate")
        fwdp = median_of(rounds, "fwdp_rate")
        rows.append(
            [
                f"forward --parallel {parallel} >= {GOAL_RAW_RATIO:g} x send_many raw "
                f"({batch_size:,} per call)",
                "-" if x is None else f"{x:.2f}x ({fmt_rate(fwdp)} vs {fmt_rate(raw)} jobs/s)",
                verdict(None if x is None else x >= GOAL_RAW_RATIO),
            ]
        )
    return markdown(["goal (medians)", "measured", "result"], rows)


def derive(out: Metrics) -> None:
    for prefix in ("fwd", "rev"):
        out[f"{prefix}_small_sql_s"] = sum(
            out.get(f"{prefix}_sql_{label}_s", 0.0)
            for label in ("waiting_count", "celery_active", "other_sql")
        )
    out["vacuum_total_s"] = sum(out.get(k, 0.0) for k in ("raw_vacuum_s", "fwd_vacuum_s",
                                                           "rev_vacuum_s"))  # fmt: skip


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--database-url",
        default=None,
        help="a server to create the scratch database on "
        f"[default: $DATABASE_URL or {DEFAULT_URL}]",
    )
    p.add_argument("--jobs", type=int, default=100_000, help="N waiting legacy jobs")
    p.add_argument("--batch-size", type=int, default=1000, help="migrator batch, send chunk")
    p.add_argument("--rounds", type=int, default=3, help="repeat; the tables show medians")
    p.add_argument("--documents", type=int, default=1000)
    p.add_argument("--agents", type=int, default=4, help="evaluations: documents x agents")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="raw numbers")
    p.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="also time a forward run with this many batches in flight (1: skip it)",
    )
    p.add_argument("--quick", action="store_true", help="10,000 jobs, one round (a smoke run)")
    args = p.parse_args(argv)
    args.database_url = args.database_url or os.environ.get("DATABASE_URL") or DEFAULT_URL
    if args.quick:
        args.jobs, args.rounds, args.documents = 10_000, 1, 250
    if min(args.jobs, args.batch_size, args.rounds, args.documents, args.agents) < 1:
        p.error("--jobs, --batch-size, --rounds, --documents and --agents must be >= 1")
    return args


def machine_lines(args: argparse.Namespace) -> list[str]:
    import psycopg

    lines = machine_info(args.database_url)
    try:
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('autovacuum')").fetchone()
        lines.append(
            f"autovacuum={row[0] if row else '?'}: the benchmark runs VACUUM ANALYZE on the "
            "tables it churns between phases (outside the clocks), as autovacuum would"
        )
    except Exception as exc:
        lines.append(f"PostgreSQL: unavailable ({exc!r})")
    return lines


def run(args: argparse.Namespace, url: str) -> tuple[list[Metrics], Bench]:
    import psycopg

    from roast_jobs.broker.connections import split_url
    from roast_jobs.config import override_settings
    from roast_jobs.domain.runner import time_limit_for
    from roast_jobs.service.job_service import HARD_LIMIT_GRACE, JobService

    # Settings are process-wide: point them at the scratch database before any service.
    os.environ["DATABASE_URL"] = url
    settings = override_settings(
        database_url=url,
        broker_schema="roast_jobs_broker",
        use_celery=None,
        celery_rollout_percent=None,
        evaluation_time_limit=None,
    )
    libpq, _ = split_url(url)
    db = psycopg.connect(libpq, autocommit=True)
    raw_service = JobService(url)
    soft = time_limit_for(None)  # the sample agents have no extended capability
    bench = Bench(
        args=args, url=url, db=db, schema=settings.broker_schema, evaluations=[],
        raw_service=raw_service, soft_limit=soft, hard_limit=soft + HARD_LIMIT_GRACE,
    )  # fmt: skip
    rounds: list[Metrics] = []
    try:
        bench.evaluations = populate(args, url, db)
        warm_up(bench)  # also creates the broker's schema
        bench.vacuum()
        bench.mark_rss("after setup")
        bench.timer.install()
        for round_ in range(1, args.rounds + 1):
            print(f"== round {round_}/{args.rounds}", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                out, ok = one_round(bench, round_)
            except Exception as exc:
                bench.errors.append(f"round {round_}: {type(exc).__name__}: {exc}"[:2000])
                log(f"round {round_} FAILED: {exc!r}")
                break
            derive(out)
            rounds.append(out)
            log(f"round {round_} done in {time.monotonic() - t0:.1f}s")
            if not ok:
                log("a check failed: the state is not the expected one, no further rounds")
                break
    finally:
        bench.timer.uninstall()
        raw_service.close()
        with contextlib.suppress(Exception):
            raw_service.app.close()
        db.close()
    bench.mark_rss("end")
    return rounds, bench


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, raise_interrupt)
    overridden = [k for k in UNSET_ENV if k in os.environ]
    for key in overridden:  # defaults only (e.g. no evaluation time limit override)
        del os.environ[key]
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    header = [f"command: {command}", *machine_lines(args)]
    if overridden:
        header.append(f"ignored from the environment: {', '.join(overridden)}")
    for line in header:
        print(line, file=sys.stderr)
    try:
        with throwaway_database(args.database_url) as url:
            rounds, bench = run(args, url)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    wall = time.monotonic() - started
    complete = bool(rounds) and len(rounds) == args.rounds and not bench.errors
    print()
    for line in header:
        print(line)
    print(
        f"jobs N={args.jobs:,}, batch size B={args.batch_size:,}, {args.documents:,} documents "
        f"x {args.agents} agents = {len(bench.evaluations):,} evaluations; rounds: "
        f"{len(rounds)} of {args.rounds} (medians); total run time {wall:.0f}s; load average "
        f"at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(results_table(rounds, args))
    print()
    print(goals_table(rounds, complete, args.batch_size, args.parallel))
    print()
    print(
        "send_many raw: JobManager.send_many(EVALUATION_TASK, [TaskCall(kwargs=...)], "
        f'queue="{QUEUE}", soft_time_limit={bench.soft_limit:g}, '
        f"time_limit={bench.hard_limit:g}) into the scratch database's broker schema, "
        f"{args.batch_size:,} per call (one transaction each, like a migrator batch), the "
        "clock around the calls only (each chunk's TaskCalls built before its clock; the "
        f"manager warmed up by {WARMUP_MESSAGES} messages at setup); the messages are "
        "deleted after each round's send. Forward/reverse: migrate(direction, url, "
        f"batch_size={args.batch_size}) end to end, with a fresh JobService made and closed "
        "inside the clock (what migrate does without service=); each run checked: N moved, "
        "N (then 0) messages, N (then 2N) JobMigrationStatus records, no PENDING job left "
        "on the source. JobMigrationStatus is emptied before each round. Between phases: "
        "VACUUM ANALYZE of Job, JobMigrationStatus and the broker's message table "
        "(autovacuum is off on this server), outside the clocks. For comparison, each "
        f"round ends with send_many raw of all {args.jobs:,} in one call. Ratios: the median "
        "of each round's forward rate / raw rate."
    )
    print()
    print(
        "peak RSS of the benchmark process (ru_maxrss, MB): "
        + "; ".join(f"{label} {mb:.0f}" for label, mb in bench.rss_marks)
    )
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
            "rss_mb": bench.rss_marks,
            "errors": bench.errors,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"\nraw numbers written to {args.json}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
