"""A migrator run: batches until nothing is left to move, with progress and a summary.

Idempotent and resumable by construction: a batch is one transaction, so a run killed
at any point leaves each job either moved (with its record) or untouched, and the next
run takes what is left. Runs side by side never take the same job (SKIP LOCKED).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import text

from roast_jobs.db.session import transaction
from roast_jobs.service.job_service import JobService

from . import sql
from .batches import BatchResult, forward_batch, preview_forward, preview_reverse, reverse_batch

#: Passes of a reverse run over the waiting Celery jobs: a later pass retries the jobs
#: an earlier one found busy (a message locked by a claim or an ack in flight).
REVERSE_PASSES = 3


class Direction(StrEnum):
    LEGACY_TO_CELERY = "legacy-to-celery"
    CELERY_TO_LEGACY = "celery-to-legacy"

    @property
    def source(self) -> str:
        return "legacy" if self is Direction.LEGACY_TO_CELERY else "celery"


@dataclass
class Summary:
    direction: str
    dry_run: bool
    run_id: str | None
    moved: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0
    waiting_before: int = 0
    waiting_after: int = 0
    # Reverse: jobs still on Celery at the end, PENDING (held by a worker) or RUNNING.
    left_running: int | None = None

    @property
    def rate(self) -> float:
        return self.moved / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: BatchResult) -> None:
        self.moved += result.moved
        for reason, count in result.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "rate": round(self.rate, 1)}


#: Called after each batch with (the summary so far, jobs looked at so far).
Progress = Callable[[Summary, int], None]


def waiting(url: str, backend: str) -> int:
    """Waiting (PENDING) jobs on ``backend``."""
    with transaction(url) as session:
        return int(session.execute(text(sql.WAITING_COUNT), {"backend": backend}).scalar_one())


def migrate(
    direction: Direction,
    url: str,
    *,
    batch_size: int = 1000,
    limit: int | None = None,
    dry_run: bool = False,
    pause: float = 0.0,
    progress: Progress | None = None,
    service: JobService | None = None,
    parallel: int = 1,
) -> Summary:
    """Move the waiting jobs of ``direction``'s source backend to the other one.

    ``limit``: at most this many jobs looked at; ``pause``: seconds between batches (to
    go gently on a busy database). ``dry_run`` reads, locks nothing and writes nothing.
    ``parallel``: forward batches in flight at once, each on its own connection.
    """
    if parallel < 1 or (parallel > 1 and direction is not Direction.LEGACY_TO_CELERY):
        raise ValueError("parallel batches (at least 1) are for legacy-to-celery only")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    own = service is None
    service = service or JobService(url)
    summary = Summary(str(direction), dry_run, None if dry_run else str(uuid.uuid4()))
    started = time.monotonic()
    try:
        summary.waiting_before = waiting(url, direction.source)
        cap = summary.waiting_before if limit is None else min(limit, summary.waiting_before)
        if dry_run:
            _preview(direction, service, url, summary, cap, batch_size)
        elif direction is Direction.LEGACY_TO_CELERY:
            _forward(service, url, summary, limit, batch_size, pause, progress, parallel)
        else:
            _reverse(service, url, summary, limit, batch_size, pause, progress)
        summary.waiting_after = waiting(url, direction.source)
        if direction is Direction.CELERY_TO_LEGACY:
            with transaction(url) as session:
                running, active = session.execute(text(sql.CELERY_ACTIVE)).one()
            # A real run counts what is still on Celery when it ends; a dry run what a
            # worker holds now and would keep.
            summary.left_running = (
                int(running) + sum(summary.skipped.values()) if dry_run else int(active)
            )
    finally:
        summary.seconds = time.monotonic() - started
        if own:
            service.close()
    return summary


def _preview(
    direction: Direction,
    service: JobService,
    url: str,
    summary: Summary,
    cap: int,
    batch_size: int,
) -> None:
    with transaction(url) as session:
        session.execute(text("SET TRANSACTION READ ONLY"))
        if direction is Direction.LEGACY_TO_CELERY:
            for reason, count in preview_forward(session, cap).items():
                if reason is None:
                    summary.moved = count
                else:
                    summary.skipped[reason] = count
        else:
            summary.add(preview_reverse(service, session, cap, batch_size))
    looked_at = summary.moved + sum(summary.skipped.values())
    summary.batches = -(-looked_at // batch_size)  # the batches a real run would take


def _budget(limit: int | None, seen: int, batch_size: int) -> int:
    return batch_size if limit is None else min(batch_size, limit - seen)


def _forward(
    service: JobService,
    url: str,
    summary: Summary,
    limit: int | None,
    batch_size: int,
    pause: float,
    progress: Progress | None,
    parallel: int = 1,
) -> None:
    """Batches until none is left; ``parallel`` loops at once, each batch its own
    transaction (SKIP LOCKED keeps their rows apart, as between two migrators)."""
    run_id = summary.run_id or ""
    lock, failed = threading.Lock(), threading.Event()
    seen = 0  # jobs looked at, or reserved by a batch in flight (never past --limit)

    def loop() -> None:
        nonlocal seen
        while not failed.is_set():
            with lock:
                size = _budget(limit, seen, batch_size)
                seen += max(size, 0)
            if size <= 0:
                return
            try:
                with transaction(url) as session:
                    result = forward_batch(service, session, size, run_id)
            except BaseException:
                failed.set()  # the other loops stop after their batch
                raise
            with lock:
                seen -= size - result.picked
                if result.picked == 0:
                    return
                summary.batches += 1
                summary.add(result)
                if progress:
                    progress(summary, seen)
            if pause:
                time.sleep(pause)

    if parallel <= 1:
        loop()
        return
    service.manager  # noqa: B018 - started once, before the loops share it
    with ThreadPoolExecutor(parallel, thread_name_prefix="migrate") as pool:
        for future in [pool.submit(loop) for _ in range(parallel)]:
            future.result()


def _reverse(
    service: JobService,
    url: str,
    summary: Summary,
    limit: int | None,
    batch_size: int,
    pause: float,
    progress: Progress | None,
) -> None:
    run_id = summary.run_id or ""
    seen = 0
    for _ in range(REVERSE_PASSES):
        after: tuple[datetime, str] | None = None
        moved_before, left = summary.moved, Summary("", False, None)
        while (size := _budget(limit, seen, batch_size)) > 0:
            with transaction(url) as session:
                result = reverse_batch(service, session, size, run_id, after)
            if result.picked == 0:
                break
            after = result.last
            seen += result.picked
            summary.batches += 1
            summary.moved += result.moved
            left.add(result)  # what this pass leaves; a later pass may still move it
            summary.skipped = left.skipped
            if progress:
                progress(summary, seen)
            if pause:
                time.sleep(pause)
        if not left.skipped or summary.moved == moved_before:
            break
