#!/usr/bin/env python
"""What one refresh of the migration dashboard (``/dashboard``) costs the database, on a
``"Job"`` table of N finished jobs, with and without an index on ``"completedAt"``.

Run from the repository root:

    .venv/bin/python scripts/bench_dashboard.py [--database-url URL] [--jobs N] [--calls C]

On a scratch database (created on the server of ``--database-url`` / $DATABASE_URL,
migrated, dropped at the end): N jobs in one ``INSERT ... SELECT`` (half on each backend,
one in 50 FAILED, finished 0.8 s apart over the last N * 0.8 s), ``VACUUM ANALYZE``. Then,
timed C times each after one warm-up call: ``rollout.status.collect`` (behind
``GET /api/admin/rollout``) and ``rollout.series.job_series`` for the hour in 60 s
buckets and the day in 300 s buckets (behind ``GET /api/admin/jobs/metrics``). The same
again after ``CREATE INDEX ON "Job" ("completedAt")``. Prints a table of medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
from collections.abc import Callable

import psycopg
from bench_domain_support import log, markdown, raise_interrupt, throwaway_database

from roast_jobs.db.session import transaction
from roast_jobs.domain import sample_data
from roast_jobs.rollout import series
from roast_jobs.rollout.status import collect

_JOBS = """
INSERT INTO "Job" (id, status, attempts, "evaluationId", backend, "createdAt", "updatedAt",
                   "startedAt", "completedAt")
SELECT gen_random_uuid()::text,
       CASE WHEN i %% 50 = 0 THEN 'FAILED' ELSE 'COMPLETED' END::"JobStatus", 1, %(ev)s,
       CASE WHEN i %% 2 = 0 THEN 'legacy' ELSE 'celery' END,
       now() AT TIME ZONE 'UTC' - make_interval(secs => i * 0.8),
       now() AT TIME ZONE 'UTC' - make_interval(secs => i * 0.8),
       now() AT TIME ZONE 'UTC' - make_interval(secs => i * 0.8 - 1),
       now() AT TIME ZONE 'UTC' - make_interval(secs => i * 0.8 - 5)
  FROM generate_series(1, %(n)s) i
"""


def populate(url: str, jobs: int) -> None:
    with transaction(url) as s:
        user = sample_data.create_user(s)
        agent = sample_data.create_agent(s, user)
        [doc] = sample_data.create_documents(s, user, 1)
        evaluation = sample_data.ensure_evaluations(s, [doc], agent)[doc]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_JOBS, {"ev": evaluation, "n": jobs})
        conn.execute('VACUUM ANALYZE "Job"')


def median_ms(call: Callable[[], object], calls: int) -> float:
    call()  # warm-up: plans, caches, connections
    took = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        took.append(time.perf_counter() - start)
    return statistics.median(took) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL",
                   "postgresql://postgres@127.0.0.1:5432/postgres"))  # fmt: skip
    p.add_argument("--jobs", type=int, default=300_000)
    p.add_argument("--calls", type=int, default=5)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, raise_interrupt)
    reads: dict[str, Callable[[str], object]] = {
        "rollout snapshot (collect)": lambda url: collect(url, window_seconds=300),
        "series, 1 h in 60 s buckets": lambda url: series.job_series(url, 3600, 60),
        "series, 24 h in 300 s buckets": lambda url: series.job_series(url, 86400, 300),
    }
    with throwaway_database(args.database_url) as url:
        log(f"{args.jobs:,} jobs ...")
        populate(url, args.jobs)
        plain = {name: median_ms(lambda r=read: r(url), args.calls) for name, read in reads.items()}
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('CREATE INDEX ON "Job" ("completedAt")')
            conn.execute('ANALYZE "Job"')
        indexed = {
            name: median_ms(lambda r=read: r(url), args.calls) for name, read in reads.items()
        }
    rows = [[name, f"{plain[name]:.0f}", f"{indexed[name]:.0f}"] for name in reads]
    print(f"dashboard reads on {args.jobs:,} jobs, median of {args.calls} calls (ms)")
    print(markdown(["read", "no index (ms)", 'index on "completedAt" (ms)'], rows))


if __name__ == "__main__":
    main()
