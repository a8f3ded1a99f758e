"""The plan's rollback triggers, judged on one ``RolloutStatus`` snapshot.

Each trigger is a pure function of the snapshot and ``Settings`` (the thresholds are the
``rollout_*`` settings), so what fires can be read, and tested, without a database. ``[B]``
marks a trigger judged per backend (legacy, celery); the window is the snapshot's.

- ``error_rate[B]``: FAILED / (COMPLETED + FAILED) of the jobs that finished in the window
  above ``rollout_max_error_rate``; judged only from ``rollout_min_finished`` finished jobs
  on (cancelled ones count for neither side).
- ``queue_depth[B]``: PENDING jobs above ``rollout_max_queue_depth``.
- ``stuck_job``: a job RUNNING (since ``startedAt``) or PENDING (since ``createdAt``) for
  longer than ``rollout_stuck_seconds``; names the oldest.
- ``p95_pickup_to_finish[B]``: p95 of ``completedAt - startedAt`` over the window above
  ``rollout_max_p95_seconds``.
- ``dead_letters``: more than ``rollout_max_new_dead_letters`` dead letters in the window.
- ``celery_workers``: Celery jobs (or evaluation messages) wait, and no live consumer takes
  the evaluation queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from roast_jobs.config import Settings, get_settings
from roast_jobs.db.models import Backend

from .status import RolloutStatus, duration

Number = int | float


@dataclass(frozen=True)
class Trigger:
    name: str
    fired: bool
    value: Number | None  # the figure judged (None: nothing to judge yet)
    threshold: Number
    detail: str
    backend: str | None = None  # for the per-backend triggers

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    triggers: tuple[Trigger, ...]
    window_seconds: float

    @property
    def fired(self) -> tuple[Trigger, ...]:
        return tuple(t for t in self.triggers if t.fired)

    @property
    def healthy(self) -> bool:
        return not self.fired

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "triggers": [t.as_dict() for t in self.triggers],
            "window_seconds": self.window_seconds,
        }


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def error_rate(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    limit, least = settings.rollout_max_error_rate, settings.rollout_min_finished
    out = []
    for b in status.backends:
        rate = b.error_rate
        if b.finished < least:
            # Too few to tell: one failure of two is not a 50% error rate worth a rollback.
            fired, detail = False, f"{b.finished} finished, fewer than {least}: not judged"
        else:
            assert rate is not None  # finished >= least >= 1
            fired = rate > limit
            detail = f"{_pct(rate)}: {b.failed} of {b.finished} finished failed (max {_pct(limit)})"
        out.append(Trigger(f"error_rate[{b.backend}]", fired, rate, limit, detail, b.backend))
    return out


def queue_depth(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    limit = settings.rollout_max_queue_depth
    return [
        Trigger(
            f"queue_depth[{b.backend}]",
            b.pending > limit,
            b.pending,
            limit,
            f"{b.pending} PENDING (max {limit})",
            b.backend,
        )
        for b in status.backends
    ]


def stuck_job(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    limit = settings.rollout_stuck_seconds
    candidates = [j for j in (status.oldest_running, status.oldest_pending) if j is not None]
    if not candidates:
        return [Trigger("stuck_job", False, None, limit, "no PENDING or RUNNING job")]
    job = max(candidates, key=lambda j: j.age_seconds)
    since = "it started" if job.status == "RUNNING" else "it was created"
    detail = (
        f"oldest: job {job.job_id} ({job.backend}), {job.status} for {duration(job.age_seconds)}"
        f" since {since} (max {duration(limit)})"
    )
    return [Trigger("stuck_job", job.age_seconds > limit, job.age_seconds, limit, detail)]


def p95_pickup_to_finish(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    limit = settings.rollout_max_p95_seconds
    out = []
    for b in status.backends:
        p95 = b.p95_seconds
        if p95 is None:
            detail = "no job finished in the window"
        else:
            detail = f"p95 {duration(p95)} over {b.finished} finished (max {duration(limit)})"
        fired = p95 is not None and p95 > limit
        out.append(
            Trigger(f"p95_pickup_to_finish[{b.backend}]", fired, p95, limit, detail, b.backend)
        )
    return out


def dead_letters(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    limit = settings.rollout_max_new_dead_letters
    broker = status.broker
    if broker.present:
        detail = f"{broker.new_dead_letters} new in the window, {broker.dead_letters} in all"
    else:
        detail = f"no broker schema {broker.schema!r} yet: none"
    detail += f" (max {limit} new)"
    return [
        Trigger(
            "dead_letters", broker.new_dead_letters > limit, broker.new_dead_letters, limit, detail
        )
    ]


def celery_workers(status: RolloutStatus, settings: Settings) -> list[Trigger]:
    """Celery jobs wait and nobody consumes their queue: at least 1 live consumer needed."""
    broker = status.broker
    pending = status.backend(Backend.CELERY.value).pending
    waiting = pending > 0 or broker.waiting > 0
    fired = waiting and broker.live_consumers < 1
    detail = (
        f"{broker.live_consumers} live consumer(s) of {broker.queue!r}; "
        f"{pending} Celery job(s) PENDING, {broker.waiting} message(s) waiting"
    )
    if fired:
        detail += ": start `roast-jobs worker` or roll back"
    return [
        Trigger("celery_workers", fired, broker.live_consumers, 1, detail, Backend.CELERY.value)
    ]


TRIGGERS: tuple[Callable[[RolloutStatus, Settings], list[Trigger]], ...] = (
    error_rate,
    queue_depth,
    stuck_job,
    p95_pickup_to_finish,
    dead_letters,
    celery_workers,
)


def evaluate(status: RolloutStatus, settings: Settings | None = None) -> Verdict:
    settings = settings or get_settings()
    triggers = tuple(t for check in TRIGGERS for t in check(status, settings))
    return Verdict(triggers, status.window_seconds)
