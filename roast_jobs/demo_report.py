"""What ``roast-jobs demo`` reports: the batches it created, the jobs' rows it reads back,
the progress line printed while it waits, and the summary at the end (per backend:
pickup, run time, grades; per batch: when it completed; whether every job completed).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text

from roast_jobs.config import get_settings
from roast_jobs.db.session import transaction
from roast_jobs.demo_workers import CELERY_CONCURRENCY
from roast_jobs.domain.batches import BatchProgress
from roast_jobs.service.job_service import CreatedBatch

# -- formatting --------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Aligned columns: the first to the left, the others to the right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return (indent + "  ".join(parts)).rstrip()

    return [line(headers), *(line(r) for r in rows)]


# -- what the demo created and reads back ------------------------------------------------


@dataclass
class Batch:
    label: str
    agent_name: str
    created: CreatedBatch
    legacy: int = 0
    celery: int = 0


@dataclass
class JobRow:
    backend: str
    status: str
    pickup: float | None
    run: float | None
    grade: int | None


_JOBS = """
SELECT j.backend, j.status,
       extract(epoch FROM j."startedAt" - j."createdAt")::float8 AS pickup,
       coalesce(extract(epoch FROM j."completedAt" - j."startedAt")::float8,
                j."durationInSeconds") AS run,
       v.grade, coalesce(j."originalJobId", j.id) AS root
  FROM "Job" j LEFT JOIN "EvaluationVersion" v ON v.id = j."evaluationVersionId"
 WHERE j."agentEvalBatchId" = ANY(:batches) OR j.id = ANY(:ids) OR j."originalJobId" = ANY(:ids)
"""


def job_rows(url: str, batch_ids: list[str], job_ids: list[str]) -> list[tuple[JobRow, str]]:
    """The jobs of the batches and ``job_ids`` (with their retries), each with the id of
    the job it retries (its own id if none)."""
    with transaction(url) as s:
        rows = s.execute(text(_JOBS), {"batches": batch_ids, "ids": job_ids}).all()
    return [(JobRow(r[0], r[1], r[2], r[3], r[4]), r[5]) for r in rows]


# -- while waiting -----------------------------------------------------------------------


def progress_line(
    batches: Sequence[Batch],
    progress: Sequence[BatchProgress],
    import_rows: Sequence[JobRow],
    import_jobs: int,
) -> str:
    """``batch 1 12/20  batch 2 5/5 done  import 1/1``: jobs ended of each batch, and the
    import's evaluations completed (when it queued any)."""
    parts = [
        f"{b.label} {p.completed + p.failed + p.cancelled}/{p.expected}"
        + (" done" if p.is_complete else "")
        for b, p in zip(batches, progress, strict=True)
    ]
    if import_jobs:
        parts.append(f"import {sum(r.status == 'COMPLETED' for r in import_rows)}/{import_jobs}")
    return "  ".join(parts)


# -- the summary -------------------------------------------------------------------------


def backend_summary(rows: Sequence[tuple[JobRow, str]]) -> list[str]:
    """A blank line, then per backend (and all): jobs, completed, failed, pickup and run
    times, grade; then how each backend picks jobs up."""
    lines = [
        "",
        "summary (pickup: createdAt -> startedAt; run: startedAt -> completedAt; "
        "grade: mean of the evaluations)",
    ]
    table_rows = []
    for name in ("legacy", "celery", "all"):
        jobs = [r for r, _ in rows if name in (r.backend, "all")]
        if not jobs:
            continue
        pickups = [r.pickup for r in jobs if r.pickup is not None]
        runs = [r.run for r in jobs if r.run is not None and r.status == "COMPLETED"]
        grades = [r.grade for r in jobs if r.grade is not None]
        table_rows.append(
            [
                name,
                str(len(jobs)),
                str(sum(r.status == "COMPLETED" for r in jobs)),
                str(sum(r.status == "FAILED" for r in jobs)),
                seconds(statistics.mean(pickups) if pickups else None),
                seconds(statistics.median(pickups) if pickups else None),
                seconds(statistics.mean(runs) if runs else None),
                seconds(statistics.median(runs) if runs else None),
                f"{statistics.mean(grades):.1f}" if grades else "-",
            ]
        )
    headers = [
        "backend",
        "jobs",
        "completed",
        "failed",
        "pickup mean",
        "pickup p50",
        "run mean",
        "run p50",
        "grade",
    ]
    lines += table(headers, table_rows)
    settings = get_settings()
    lines += [
        f"  legacy: a poll every {settings.legacy_poll_interval:g} s, a new process per job, "
        f"up to {settings.legacy_max_workers} at once",
        f"  celery: {CELERY_CONCURRENCY} long-lived processes, woken by the broker (LISTEN/NOTIFY)",
        "  grades differ by agent and document only: an evaluation grades the same on both",
    ]
    return lines


def batch_summary(batches: Sequence[Batch], progress: Sequence[BatchProgress]) -> list[str]:
    """A blank line, then per batch: jobs, legacy/celery, created, completed, took."""
    batch_rows = []
    for b, p in zip(batches, progress, strict=True):
        took = f"{(p.completed_at - p.created_at).total_seconds():.1f} s" if p.completed_at else "-"
        batch_rows.append(
            [
                b.label,
                str(p.expected),
                f"{p.legacy}/{p.celery}",
                f"{p.created_at:%H:%M:%S.%f}"[:-3],
                f"{p.completed_at:%H:%M:%S.%f}"[:-3] if p.completed_at else "not yet",
                took,
            ]
        )
    return [
        "",
        *table(
            ["batch", "jobs", "legacy/celery", "createdAt UTC", "completedAt UTC", "took"],
            batch_rows,
        ),
    ]


def outcome(
    rows: Sequence[tuple[JobRow, str]],
    batches: Sequence[Batch],
    progress: Sequence[BatchProgress],
    *,
    import_jobs: int,
    import_ok: bool,
) -> tuple[bool, list[str]]:
    """Whether every evaluation asked for ended with a completed job (a retry counts),
    the import worked and every batch completed; and the lines that say so."""
    roots: dict[str, bool] = {}
    for r, root in rows:
        roots[root] = roots.get(root, False) or r.status == "COMPLETED"
    expected = sum(b.created.job_count for b in batches) + import_jobs
    completed = sum(roots.values())
    ok = import_ok and completed == expected == len(roots) and all(p.is_complete for p in progress)
    if ok:
        return ok, ["", f"all {expected} jobs completed"]
    problems = [f"{expected - completed} of {expected} jobs did not complete"]
    if not import_ok:
        problems.append("the import failed")
    return ok, ["", "FAILED: " + "; ".join(problems)]
