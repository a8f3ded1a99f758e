"""One snapshot of the rollout, read from the database: the flags, the jobs of each backend
(by state, and how the last window went), the migrator's progress and the broker's health.

``collect`` reads everything in one REPEATABLE READ, read-only transaction, so the figures
agree with each other (a job that finishes mid-read is not counted twice or not at all)
and nothing is written. It is what ``roast-jobs rollout status`` prints and what
``rollout.checks`` judges. The queries are few and set-based: one scan of ``"Job"`` gives
every per-backend figure; the others read small tables or indexes.

Times on ``"Job"`` are Prisma's UTC timestamps without a zone; the SQL compares them with
``now() AT TIME ZONE 'UTC'``, right whatever the session's time zone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, text

from roast_jobs.broker.sql.health import health_statements
from roast_jobs.config import get_settings
from roast_jobs.db.models import Backend, JobStatus
from roast_jobs.db.session import transaction
from roast_jobs.service.flags import Flags, from_values, read_table

#: The Celery queue of evaluations (``service.job_service.QUEUES``), spelled out so that
#: reading the status does not import Celery; a test checks the two agree.
EVALUATION_QUEUE = "evaluation"

_NOW = "(now() AT TIME ZONE 'UTC')"
_FINISHED = "status IN ('COMPLETED', 'FAILED')"  # cancelled jobs neither pass nor fail

# Every per-backend figure in one scan: counts by state (whenever created) and, for the
# jobs that ended within the window, outcomes and the p95 of pickup-to-finish.
_COUNTS = ",\n    ".join(
    f"count(*) FILTER (WHERE status = '{s.value}') AS {s.value.lower()}" for s in JobStatus
)
_JOBS = f"""
SELECT backend,
    {_COUNTS},
    count(*) FILTER (WHERE status = 'COMPLETED' AND "completedAt" > w.since) AS w_completed,
    count(*) FILTER (WHERE status = 'FAILED' AND "completedAt" > w.since) AS w_failed,
    count(*) FILTER (WHERE status = 'CANCELLED' AND "completedAt" > w.since) AS w_cancelled,
    percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM "completedAt" - "startedAt")::float8
    ) FILTER (WHERE {_FINISHED} AND "completedAt" > w.since AND "startedAt" IS NOT NULL)
        AS w_p95
FROM "Job", (SELECT {_NOW} - make_interval(secs => :window) AS since) AS w
GROUP BY backend
"""

# The oldest RUNNING job (since it started) and the oldest PENDING one (since created).
_OLDEST = f"""
SELECT DISTINCT ON (status) status, id, backend, age
FROM (
    SELECT status, id, backend,
           extract(epoch FROM {_NOW} - CASE WHEN status = 'RUNNING'
               THEN COALESCE("startedAt", "createdAt") ELSE "createdAt" END)::float8 AS age
    FROM "Job" WHERE status IN ('PENDING', 'RUNNING')
) AS active
ORDER BY status, age DESC, id
"""

_MIGRATED = """
SELECT "fromBackend", "toBackend", status, count(*)
FROM "JobMigrationStatus" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
# The run that wrote last, and how it went.
_LAST_RUN = """
SELECT "runId", max("createdAt"),
       count(*) FILTER (WHERE status = 'moved'), count(*) FILTER (WHERE status = 'failed')
FROM "JobMigrationStatus"
WHERE "runId" = (SELECT "runId" FROM "JobMigrationStatus" WHERE "runId" IS NOT NULL
                 ORDER BY "createdAt" DESC, id DESC LIMIT 1)
GROUP BY "runId"
"""
_MIGRATION_ERRORS = """
SELECT COALESCE(error, '(no reason recorded)') AS reason, count(*)
FROM "JobMigrationStatus" WHERE status = 'failed'
GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5
"""


def utc(value: datetime | None) -> datetime | None:
    """A ``"Job"``-style naive UTC timestamp as an aware one (aware ones pass through)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def duration(seconds: float | None) -> str:
    """``41.2 s``, ``12m 5s``, ``3h 2m``: short enough for one line of output."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m" if hours < 48 else f"{hours // 24}d {hours % 24}h"


@dataclass(frozen=True)
class BackendFigures:
    """One backend's jobs: ``counts`` by state over all time, the rest over the window."""

    backend: str
    counts: Mapping[str, int]
    completed: int
    failed: int
    cancelled: int
    p95_seconds: float | None
    window_seconds: float

    @property
    def pending(self) -> int:
        return self.counts.get(JobStatus.PENDING.value, 0)

    @property
    def running(self) -> int:
        return self.counts.get(JobStatus.RUNNING.value, 0)

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None

    @property
    def per_minute(self) -> float:
        return self.finished * 60.0 / self.window_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "jobs": dict(self.counts),
            "window": {
                "completed": self.completed,
                "failed": self.failed,
                "cancelled": self.cancelled,
                "finished": self.finished,
                "error_rate": self.error_rate,
                "finished_per_minute": round(self.per_minute, 3),
                "p95_pickup_to_finish_seconds": self.p95_seconds,
            },
        }


@dataclass(frozen=True)
class OldestJob:
    job_id: str
    backend: str
    status: str
    age_seconds: float  # RUNNING: since it started; PENDING: since it was created

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "backend": self.backend,
            "status": self.status,
            "age_seconds": round(self.age_seconds, 3),
        }


@dataclass(frozen=True)
class MigrationCount:
    from_backend: str
    to_backend: str
    status: str  # moved | failed (the job could not run: FAILED by the migrator)
    count: int


@dataclass(frozen=True)
class MigrationProgress:
    counts: tuple[MigrationCount, ...] = ()
    remaining: int = 0  # PENDING legacy jobs: what a migrator run would still move
    last_run_id: str | None = None
    last_run_at: datetime | None = None
    last_run_moved: int = 0
    last_run_failed: int = 0
    failure_reasons: tuple[tuple[str, int], ...] = ()  # the commonest first

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": [
                {"from": c.from_backend, "to": c.to_backend, "status": c.status, "count": c.count}
                for c in self.counts
            ],
            "remaining": self.remaining,
            "last_run": None
            if self.last_run_id is None
            else {
                "run_id": self.last_run_id,
                "at": _iso(self.last_run_at),
                "moved": self.last_run_moved,
                "failed": self.last_run_failed,
            },
            "failure_reasons": [{"error": e, "count": n} for e, n in self.failure_reasons],
        }


@dataclass(frozen=True)
class BrokerFigures:
    """The Celery side as the broker's tables see it; all zero while the broker schema
    does not exist (no Celery process has ever run on this database)."""

    schema: str
    present: bool = False
    queue: str = EVALUATION_QUEUE
    waiting: int = 0  # messages of ``queue`` ready to be claimed
    live_consumers: int = 0  # consumers of ``queue`` whose process keeps them alive
    new_dead_letters: int = 0  # within the window, all queues
    dead_letters: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "present": self.present,
            "queue": self.queue,
            "waiting_messages": self.waiting,
            "live_consumers": self.live_consumers,
            "new_dead_letters": self.new_dead_letters,
            "dead_letters": self.dead_letters,
        }


@dataclass(frozen=True)
class RolloutStatus:
    taken_at: datetime
    window_seconds: float
    flags: Flags
    flag_table: Mapping[str, Any]
    backends: tuple[BackendFigures, ...]  # legacy, then celery: both always present
    migration: MigrationProgress
    broker: BrokerFigures
    oldest_running: OldestJob | None = None
    oldest_pending: OldestJob | None = None

    def backend(self, name: str) -> BackendFigures:
        return next(b for b in self.backends if b.backend == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": _iso(self.taken_at),
            "window_seconds": self.window_seconds,
            "flags": {**self.flags.as_dict(), "table": dict(self.flag_table)},
            "backends": {b.backend: b.as_dict() for b in self.backends},
            "oldest_running": self.oldest_running and self.oldest_running.as_dict(),
            "oldest_pending": self.oldest_pending and self.oldest_pending.as_dict(),
            "migration": self.migration.as_dict(),
            "broker": self.broker.as_dict(),
        }


def _iso(value: datetime | None) -> str | None:
    value = utc(value)
    return value.isoformat() if value is not None else None


def collect(
    url: str | None = None,
    window_seconds: float | None = None,
    broker_schema: str | None = None,
) -> RolloutStatus:
    """The rollout's figures now, over the last ``window_seconds`` (Settings' default)."""
    settings = get_settings()
    window = float(settings.rollout_window_seconds if window_seconds is None else window_seconds)
    schema = broker_schema or settings.broker_schema
    with transaction(url) as session:
        # Before any statement: the isolation level applies to the next transaction only.
        conn = session.connection(
            execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
        )
        taken_at = conn.execute(text("SELECT now()")).scalar_one()
        table = read_table(session=session)
        backends = _backends(conn, window)
        oldest = {
            row.status: OldestJob(row.id, row.backend, row.status, float(row.age))
            for row in conn.execute(text(_OLDEST))
        }
        legacy = next(b for b in backends if b.backend == Backend.LEGACY.value)
        migration = _migration(conn, remaining=legacy.pending)
        broker = _broker(conn, schema, window)
    return RolloutStatus(
        taken_at=taken_at,
        window_seconds=window,
        flags=from_values(table),
        flag_table=table,
        backends=backends,
        migration=migration,
        broker=broker,
        oldest_running=oldest.get(JobStatus.RUNNING.value),
        oldest_pending=oldest.get(JobStatus.PENDING.value),
    )


def _backends(conn: Connection, window: float) -> tuple[BackendFigures, ...]:
    rows = {row.backend: row for row in conn.execute(text(_JOBS), {"window": window})}
    out = []
    for backend in Backend:
        row = rows.get(backend.value)
        counts = {s.value: (getattr(row, s.value.lower()) if row else 0) for s in JobStatus}
        out.append(
            BackendFigures(
                backend=backend.value,
                counts=counts,
                completed=row.w_completed if row else 0,
                failed=row.w_failed if row else 0,
                cancelled=row.w_cancelled if row else 0,
                p95_seconds=row.w_p95 if row else None,
                window_seconds=window,
            )
        )
    return tuple(out)


def _migration(conn: Connection, remaining: int) -> MigrationProgress:
    counts = tuple(MigrationCount(*row) for row in conn.execute(text(_MIGRATED)))
    last = conn.execute(text(_LAST_RUN)).first()
    reasons = tuple((row[0], row[1]) for row in conn.execute(text(_MIGRATION_ERRORS)))
    return MigrationProgress(
        counts=counts,
        remaining=remaining,
        last_run_id=last[0] if last else None,
        last_run_at=utc(last[1]) if last else None,
        last_run_moved=last[2] if last else 0,
        last_run_failed=last[3] if last else 0,
        failure_reasons=reasons,
    )


def _broker(conn: Connection, schema: str, window: float) -> BrokerFigures:
    sql = health_statements(schema)
    if not conn.exec_driver_sql(sql.schema_ready).scalar():
        return BrokerFigures(schema=schema)
    row = conn.exec_driver_sql(
        sql.queue_health, {"queue": EVALUATION_QUEUE, "window": window}
    ).one()
    return BrokerFigures(
        schema=schema,
        present=True,
        waiting=row.waiting,
        live_consumers=row.live_consumers,
        new_dead_letters=row.new_dead,
        dead_letters=row.dead,
    )
