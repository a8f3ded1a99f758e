"""Prometheus metrics of both backends, read from the database at each scrape.

Why from the database and not from counters in the processes: a Celery worker's jobs run
in prefork children that come and go, the legacy worker forks a process per job, and
several hosts run workers. Counters kept in those processes would need prometheus-client's
multiprocess mode on every host and would reset when a process is replaced. The rows the
jobs leave (``"Job"``, the broker's tables, the migrator's ledger) already count every run
once, whichever process ran it, so a scrape reads them: nothing is lost or counted twice,
and any number of API processes agree. The cost is one read-only transaction per scrape
(a few index and table scans; scrape every 15-60 s, not every second).

``JobMetrics`` is a prometheus-client collector: register it (``registry()``) and serve it
with ``generate_latest`` (``roast-jobs metrics`` prints it; the HTTP API will mount it at
``/metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import text

from roast_jobs.broker.sql.health import health_statements
from roast_jobs.config import get_settings
from roast_jobs.db.session import transaction
from roast_jobs.legacy.heartbeat import LiveWorkers, live_workers
from roast_jobs.rollout.status import RolloutStatus, collect

#: Histogram buckets (seconds): evaluations take seconds to 20 minutes; pickup should take
#: milliseconds on Celery and about a poll (1 s) on the legacy worker.
DURATION_BUCKETS = (0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
PICKUP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0)
TASK = "evaluation"  # every "Job" row is an evaluation job

# Per backend: jobs created, runs started, jobs retried.
_JOB_TOTALS = """
SELECT backend, count(*), COALESCE(sum(attempts), 0),
       count(*) FILTER (WHERE attempts > 1 OR "originalJobId" IS NOT NULL)
FROM "Job" GROUP BY backend
"""

# Histogram counts in one pass per kind: k = how many bounds lie at or above the value
# (width_bucket over the negated, ascending bounds), so the value's "le" bucket is the
# (n - k)-th bound (0-based) and k = 0 means above them all (+Inf only).
_JOB_HISTOGRAMS = """
WITH j AS (
    SELECT backend,
           CASE WHEN status IN ('COMPLETED', 'FAILED') AND "startedAt" IS NOT NULL
                THEN extract(epoch FROM "completedAt" - "startedAt")::float8 END AS d,
           CASE WHEN "startedAt" IS NOT NULL
                THEN extract(epoch FROM "startedAt" - "createdAt")::float8 END AS p
    FROM "Job"
)
SELECT backend, 'duration', width_bucket(-d, CAST(:dur AS float8[])), count(*), sum(d)
  FROM j WHERE d IS NOT NULL GROUP BY 1, 3
UNION ALL
SELECT backend, 'pickup', width_bucket(-p, CAST(:pick AS float8[])), count(*), sum(p)
  FROM j WHERE p IS NOT NULL GROUP BY 1, 3
"""


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bound (not cumulative), then above them all
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls(bounds, [0] * (len(bounds) + 1))

    def add(self, k: int, count: int, total: float) -> None:
        self.counts[len(self.bounds) - k if k else len(self.bounds)] += count
        self.total += total

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    waiting: int
    scheduled: int
    active: int
    redelivered: int
    oldest_waiting_seconds: float | None
    dead_letters: int
    live_consumers: int


class JobMetrics:
    """A collector: every figure from one status snapshot and three more queries."""

    def __init__(self, url: str | None = None, broker_schema: str | None = None) -> None:
        self.url = url
        self.schema = broker_schema or get_settings().broker_schema

    def read(self) -> tuple[RolloutStatus, dict[str, Any], list[QueueDepth]]:
        status = collect(self.url, broker_schema=self.schema)
        sql = health_statements(self.schema)
        jobs: dict[str, Any] = {}
        with transaction(self.url) as session:
            for backend, created, runs, retried in session.execute(text(_JOB_TOTALS)):
                jobs[backend] = {
                    "created": created,
                    "runs": runs,
                    "retried": retried,
                    "duration": Histogram.empty(DURATION_BUCKETS),
                    "pickup": Histogram.empty(PICKUP_BUCKETS),
                }
            bounds = {
                "dur": [-b for b in reversed(DURATION_BUCKETS)],
                "pick": [-b for b in reversed(PICKUP_BUCKETS)],
            }
            for backend, kind, k, count, total in session.execute(text(_JOB_HISTOGRAMS), bounds):
                jobs[backend][kind].add(k, count, float(total))
            conn = session.connection()
            queues: list[QueueDepth] = []
            if conn.exec_driver_sql(sql.schema_ready).scalar():
                queues = [QueueDepth(*row) for row in conn.exec_driver_sql(sql.queue_depths)]
        return status, jobs, queues

    def read_legacy_workers(self) -> LiveWorkers:
        fresh = get_settings().legacy_heartbeat_stale_seconds
        with transaction(self.url) as session:
            return live_workers(session, fresh)

    def collect(self) -> Iterator[Metric]:
        status, totals, queues = self.read()
        yield from _job_metrics(status, totals)
        yield from _queue_metrics(queues)
        yield from _rollout_metrics(status)
        yield from _legacy_worker_metrics(self.read_legacy_workers())

    def describe(self) -> list[Metric]:
        return []  # no fixed set up front: the registry must not scrape at registration


def _job_metrics(status: RolloutStatus, totals: dict[str, Any]) -> Iterator[Metric]:
    labels = ["task", "backend"]
    by_state = GaugeMetricFamily(
        "roast_jobs_jobs", "Jobs by backend and state, now.", labels=[*labels, "state"]
    )
    for b in status.backends:
        for state, count in b.counts.items():
            by_state.add_metric([TASK, b.backend, state.lower()], count)
    yield by_state
    created = CounterMetricFamily("roast_jobs_jobs_created", "Jobs created.", labels=labels)
    runs = CounterMetricFamily("roast_jobs_job_runs", "Runs started (attempts).", labels=labels)
    retried = CounterMetricFamily(
        "roast_jobs_jobs_retried", "Jobs that ran more than once.", labels=labels
    )
    ended = {
        state: CounterMetricFamily(f"roast_jobs_jobs_{state}", f"Jobs {state}.", labels=labels)
        for state in ("completed", "failed", "cancelled")
    }
    duration = HistogramMetricFamily(
        "roast_jobs_job_duration_seconds",
        "Run time of ended jobs (pickup to finish).",
        labels=labels,
    )
    pickup = HistogramMetricFamily(
        "roast_jobs_job_pickup_latency_seconds",
        "Creation to pickup of started jobs.",
        labels=labels,
    )
    counts = {b.backend: b.counts for b in status.backends}
    for backend, row in sorted(totals.items()):
        key = [TASK, backend]
        created.add_metric(key, row["created"])
        runs.add_metric(key, row["runs"])
        retried.add_metric(key, row["retried"])
        for state, family in ended.items():
            family.add_metric(key, counts.get(backend, {}).get(state.upper(), 0))
        duration.add_metric(key, row["duration"].buckets(), row["duration"].total)
        pickup.add_metric(key, row["pickup"].buckets(), row["pickup"].total)
    yield from (created, runs, retried, *ended.values(), duration, pickup)
    oldest = GaugeMetricFamily(
        "roast_jobs_oldest_pending_job_age_seconds",
        "Age of the oldest PENDING job (0 when none waits).",
    )
    oldest.add_metric([], status.oldest_pending.age_seconds if status.oldest_pending else 0.0)
    yield oldest


def _queue_metrics(queues: list[QueueDepth]) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "roast_jobs_queue_messages",
        "Broker messages by queue and state.",
        labels=["queue", "state"],
    )
    oldest = GaugeMetricFamily(
        "roast_jobs_queue_oldest_waiting_seconds",
        "Age of the oldest waiting message (0 when none waits).",
        labels=["queue"],
    )
    workers = GaugeMetricFamily(
        "roast_jobs_queue_live_consumers", "Worker consumers alive, by queue.", labels=["queue"]
    )
    redelivered = GaugeMetricFamily(
        "roast_jobs_queue_redelivered_messages",
        "Live messages handed out again after a lease ran out.",
        labels=["queue"],
    )
    for q in queues:
        for state in ("waiting", "scheduled", "active"):
            depth.add_metric([q.queue, state], getattr(q, state))
        depth.add_metric([q.queue, "dead_letter"], q.dead_letters)
        oldest.add_metric([q.queue], q.oldest_waiting_seconds or 0.0)
        workers.add_metric([q.queue], q.live_consumers)
        redelivered.add_metric([q.queue], q.redelivered)
    yield from (depth, oldest, workers, redelivered)


def _rollout_metrics(status: RolloutStatus) -> Iterator[Metric]:
    percent = GaugeMetricFamily(
        "roast_jobs_rollout_percent", "Percent of new evaluations sent to Celery (0: off)."
    )
    flags = status.flags
    percent.add_metric([], flags.rollout_percent if flags.use_celery else 0)
    yield percent
    moved = CounterMetricFamily(
        "roast_jobs_migrated_jobs",
        "Jobs the migrator moved or failed, by route.",
        labels=["from_backend", "to_backend", "status"],
    )
    for count in status.migration.counts:
        moved.add_metric([count.from_backend, count.to_backend, count.status], count.count)
    yield moved
    remaining = GaugeMetricFamily(
        "roast_jobs_migration_remaining_jobs", "PENDING legacy jobs a forward run would move."
    )
    remaining.add_metric([], status.migration.remaining)
    yield remaining


def _legacy_worker_metrics(workers: LiveWorkers) -> Iterator[Metric]:
    live = GaugeMetricFamily(
        "roast_jobs_legacy_workers", "Legacy workers whose heartbeat is fresh."
    )
    live.add_metric([], workers.live)
    running = GaugeMetricFamily(
        "roast_jobs_legacy_worker_running_jobs",
        "Jobs the live legacy workers run now (one child process each).",
    )
    running.add_metric([], workers.running)
    slots = GaugeMetricFamily(
        "roast_jobs_legacy_worker_slots", "Jobs the live legacy workers may run at once."
    )
    slots.add_metric([], workers.slots)
    yield from (live, running, slots)


def registry(url: str | None = None) -> CollectorRegistry:
    """A registry holding only these metrics (the process's own are not useful here)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JobMetrics(url))  # type: ignore[arg-type]
    return reg
