"""The maintenance pass of the job layer: the broker's pass (``broker.maintenance``) with
retention added, run by one worker at a time every ``maintenance_interval`` seconds.

- the broker's steps: hand back leases that ran out (their owner died), so states read
  right; drop messages past their TTL (task ones become dead letters), consumers whose
  process died, and abandoned queues;
- retention: delete successful results after ``archive_completed_after_seconds`` and
  failed or cancelled ones, and dead letters, after ``delete_after_days``;
- record when it ran and what it removed (``meta`` row ``maintenance``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from celery import Celery, bootsteps

from roast_jobs.broker.maintenance import Step, last_pass, run_pass
from roast_jobs.config import Settings, get_settings
from roast_jobs.jobs.sql import group_retention, qualified_name, result_statements

from .link import BrokerLink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    leases_reclaimed: int = 0
    messages_expired: int = 0
    consumers_gone: int = 0
    queues_removed: int = 0
    results_deleted: int = 0
    groups_deleted: int = 0
    dead_letters_deleted: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def run_maintenance(
    app: Celery, settings: Settings | None = None, link: BrokerLink | None = None
) -> MaintenanceReport | None:
    """One pass; None when another process is running one right now."""
    settings = settings or get_settings()
    own = link is None
    link = link or BrokerLink(app)
    try:
        done = run_pass(link.transport.pool, link.sql, extra=retention_steps(app, settings, link))
    finally:
        if own:
            link.close()
    return None if done is None else MaintenanceReport(**done)


def retention_steps(app: Celery, settings: Settings, link: BrokerLink) -> list[Step]:
    """The job layer's steps of the pass: old dead letters, results and group results."""
    older = settings.delete_after_days * 86400

    def dead_letters(conn: psycopg.Connection) -> int:
        return int(conn.execute(link.jobs.dead_purge_older, {"seconds": older}).fetchone()[0])

    steps: list[Step] = [("dead_letters_deleted", dead_letters)]
    backend = app.backend
    task_cls = getattr(backend, "task_cls", None)
    if task_cls is None:
        return steps
    backend.ResultSession().close()  # the tables exist from here on
    params = {"completed": settings.archive_completed_after_seconds, "failed": older}
    results = result_statements(qualified_name(task_cls.__table__)).retention
    steps.append(("results_deleted", lambda conn: _count(conn, results, params)))
    group_cls = getattr(backend, "taskset_cls", None)
    if group_cls is not None:
        groups = group_retention(qualified_name(group_cls.__table__))
        steps.append(("groups_deleted", lambda conn: _count(conn, groups, params)))
    return steps


def _count(conn: psycopg.Connection, statement: str, params: dict[str, Any]) -> int:
    return int(conn.execute(statement, params).fetchone()[0])  # type: ignore[index]


def last_run(link: BrokerLink) -> tuple[dict[str, int], Any] | None:
    """What the last pass (by anyone) removed, and when it ran."""
    return last_pass(link.transport.pool, link.sql)


class MaintenanceStep(bootsteps.StartStopStep):
    """Runs the maintenance pass from a thread of the worker's main process (a thread,
    so a busy solo pool cannot starve it; the advisory lock keeps it to one worker)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        app = worker.app
        every = get_settings().maintenance_interval

        def loop() -> None:
            link: BrokerLink | None = None
            while not self._stop.wait(every):
                try:
                    link = link or BrokerLink(app)
                    run_maintenance(app, link=link)
                except Exception as exc:  # the next pass tries again
                    logger.warning("maintenance pass failed: %r", exc)
                    if link is not None:
                        link.close()
                    link = None
            if link is not None:
                link.close()

        self._thread = threading.Thread(target=loop, name="roast-jobs-maintenance", daemon=True)
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
