"""Time series of the jobs, read from ``"Job"``: per backend and per time bucket, how many
jobs finished (COMPLETED, FAILED: the throughput) and how long jobs waited to be picked up
(``startedAt - createdAt``), plus the same figures over the whole window. The dashboard
charts them.

Buckets are ``bucket_seconds`` wide and aligned on the Unix epoch (``date_bin``), so they
stay put from one refresh to the next; the series is the ``ceil(window / bucket)``
buckets that end with the current, partial one. A job counts in the bucket holding its
``completedAt`` (throughput) and the one holding its ``startedAt`` (pickup); a time on a
bucket's start belongs to that bucket. A Celery retry runs the same row again, so its
``startedAt`` is the last run's: its pickup includes the retry's delay.

Times on ``"Job"`` are Prisma's UTC timestamps without a zone: the SQL takes "now" as
``now() AT TIME ZONE 'UTC'`` and the results come back as aware UTC datetimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from roast_jobs.db.models import Backend
from roast_jobs.db.session import transaction

from .status import utc

MIN_WINDOW, MAX_WINDOW = 60, 86_400
MIN_BUCKET, MAX_BUCKET = 10, 3_600
#: A series has fewer buckets than this (a chart of more would be unreadable anyway).
MAX_BUCKETS = 500

# One statement, so every figure shares one "now". ``slots`` has a row per backend and
# bucket, and one per backend with a NULL start for the window's totals (GROUPING SETS
# give the aggregates the same shape). Only rows inside [first, stop) are read.
_SERIES = """
WITH bounds AS (
    SELECT now() AT TIME ZONE 'UTC' AS now,
           date_bin(b.step, now() AT TIME ZONE 'UTC', TIMESTAMP '1970-01-01')
               - b.step * (:n - 1) AS first,
           date_bin(b.step, now() AT TIME ZONE 'UTC', TIMESTAMP '1970-01-01') + b.step AS stop,
           b.step
    FROM (SELECT make_interval(secs => :bucket) AS step) AS b
),
finished AS (
    SELECT j.backend, date_bin(w.step, j."completedAt", TIMESTAMP '1970-01-01') AS start,
           count(*) FILTER (WHERE j.status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE j.status = 'FAILED') AS failed
    FROM "Job" AS j, bounds AS w
    WHERE j.status IN ('COMPLETED', 'FAILED')
      AND j."completedAt" >= w.first AND j."completedAt" < w.stop
    GROUP BY GROUPING SETS ((j.backend, 2), (j.backend))
),
picked AS (
    SELECT j.backend, date_bin(w.step, j."startedAt", TIMESTAMP '1970-01-01') AS start,
           count(*) AS started,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY p.seconds) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY p.seconds) AS p95,
           avg(p.seconds) AS mean
    FROM "Job" AS j, bounds AS w,
         LATERAL (SELECT extract(epoch FROM j."startedAt" - j."createdAt")::float8 AS seconds) p
    WHERE j."startedAt" >= w.first AND j."startedAt" < w.stop
    GROUP BY GROUPING SETS ((j.backend, 2), (j.backend))
),
slots AS (
    SELECT b.backend, s.start
    FROM unnest(CAST(:backends AS text[])) AS b(backend)
    CROSS JOIN LATERAL (
        SELECT generate_series(w.first, w.stop - w.step, w.step) AS start FROM bounds AS w
        UNION ALL SELECT NULL
    ) AS s
)
SELECT s.backend, s.start, w.now, w.first, w.stop,
       COALESCE(f.completed, 0) AS completed, COALESCE(f.failed, 0) AS failed,
       COALESCE(p.started, 0) AS started, p.p50, p.p95, p.mean
FROM slots AS s
CROSS JOIN bounds AS w
LEFT JOIN finished AS f ON f.backend = s.backend AND f.start IS NOT DISTINCT FROM s.start
LEFT JOIN picked AS p ON p.backend = s.backend AND p.start IS NOT DISTINCT FROM s.start
ORDER BY s.backend, s.start NULLS LAST
"""


class SeriesError(ValueError):
    """A window or bucket size out of bounds; the message says which and why."""


def bucket_count(window_seconds: int, bucket_seconds: int) -> int:
    """How many buckets a window holds; ``SeriesError`` when the sizes are out of bounds."""
    if not MIN_WINDOW <= window_seconds <= MAX_WINDOW:
        raise SeriesError(
            f"window must be {MIN_WINDOW}..{MAX_WINDOW} seconds, not {window_seconds}"
        )
    if not MIN_BUCKET <= bucket_seconds <= MAX_BUCKET:
        raise SeriesError(
            f"bucket must be {MIN_BUCKET}..{MAX_BUCKET} seconds, not {bucket_seconds}"
        )
    if bucket_seconds > window_seconds:
        raise SeriesError(
            f"bucket ({bucket_seconds} s) must not exceed window ({window_seconds} s)"
        )
    n = math.ceil(window_seconds / bucket_seconds)
    if n >= MAX_BUCKETS:
        raise SeriesError(
            f"window / bucket gives {n} buckets; fewer than {MAX_BUCKETS} allowed: "
            f"use a bucket of at least {math.ceil(window_seconds / (MAX_BUCKETS - 1))} s"
        )
    return n


@dataclass(frozen=True)
class Point:
    """One backend's figures over one bucket (or, in ``totals``, the whole window)."""

    start: datetime | None  # None in ``totals``
    completed: int
    failed: int
    started: int  # jobs picked up (``startedAt`` in the bucket)
    pickup_p50: float | None  # seconds; None when nothing was picked up
    pickup_p95: float | None
    pickup_avg: float | None

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.start is None else {"start": self.start.isoformat()}
        return {
            **out,
            "completed": self.completed,
            "failed": self.failed,
            "finished": self.finished,
            "started": self.started,
            "pickupP50": self.pickup_p50,
            "pickupP95": self.pickup_p95,
            "pickupAvg": self.pickup_avg,
        }


@dataclass(frozen=True)
class JobSeries:
    taken_at: datetime
    window_seconds: int
    bucket_seconds: int
    start: datetime  # the first bucket's start
    end: datetime  # the last bucket's end (after now)
    points: dict[str, tuple[Point, ...]]  # by backend, oldest bucket first
    totals: dict[str, Point]  # by backend, over every bucket

    def as_dict(self) -> dict[str, Any]:
        return {
            "takenAt": self.taken_at.isoformat(),
            "window": self.window_seconds,
            "bucket": self.bucket_seconds,
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "backends": {
                name: {
                    "series": [p.as_dict() for p in points],
                    "totals": self.totals[name].as_dict(),
                }
                for name, points in self.points.items()
            },
        }


def job_series(url: str | None, window_seconds: int, bucket_seconds: int) -> JobSeries:
    """Throughput and pickup latency per backend and bucket over the last window."""
    n = bucket_count(window_seconds, bucket_seconds)
    backends = [b.value for b in Backend]
    with transaction(url) as session:
        rows = session.execute(
            text(_SERIES), {"bucket": float(bucket_seconds), "n": n, "backends": backends}
        ).all()
    points: dict[str, list[Point]] = {b: [] for b in backends}
    totals: dict[str, Point] = {}
    for row in rows:
        point = Point(
            start=utc(row.start),
            completed=row.completed,
            failed=row.failed,
            started=row.started,
            pickup_p50=row.p50,
            pickup_p95=row.p95,
            pickup_avg=None if row.mean is None else float(row.mean),
        )
        if point.start is None:
            totals[row.backend] = point
        else:
            points[row.backend].append(point)
    first = rows[0]
    return JobSeries(
        taken_at=utc(first.now),  # type: ignore[arg-type]
        window_seconds=window_seconds,
        bucket_seconds=bucket_seconds,
        start=utc(first.first),  # type: ignore[arg-type]
        end=utc(first.stop),  # type: ignore[arg-type]
        points={b: tuple(p) for b, p in points.items()},
        totals=totals,
    )


_FAILURES = """
SELECT id, backend, error, "completedAt" AS at
FROM "Job" WHERE status = 'FAILED'
ORDER BY "completedAt" DESC NULLS LAST, id LIMIT :limit
"""


@dataclass(frozen=True)
class Failure:
    job_id: str
    backend: str
    error: str | None
    at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "backend": self.backend,
            "error": self.error,
            "at": None if self.at is None else self.at.isoformat(),
        }


def latest_failures(url: str | None, limit: int = 10) -> list[Failure]:
    """The jobs that failed last, newest first: what an operator may want to retry."""
    with transaction(url) as session:
        rows = session.execute(text(_FAILURES), {"limit": limit}).all()
    return [Failure(r.id, r.backend, r.error, utc(r.at)) for r in rows]
