"""The maintenance pass: one worker at a time (an advisory lock), every
``maintenance_interval`` seconds, keeps the database small.

- hands back leases that ran out (their owner died), so states read right;
- drops expired messages (task ones become dead letters) and abandoned queues;
- deletes successful results after ``archive_completed_after_seconds`` and failed or
  cancelled ones, and dead letters, after ``delete_after_days``;
- records when it ran and what it removed (``meta`` row ``job_maintenance``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery, bootsteps

from roast_jobs.broker.maintenance import sweep
from roast_jobs.config import Settings, get_settings
from roast_jobs.jobs.results import qualified_name

from .link import BrokerLink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceReport:
    leases_reclaimed: int = 0
    messages_expired: int = 0
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
        return _run(app, settings, link)
    finally:
        if own:
            link.close()


def _run(app: Celery, settings: Settings, link: BrokerLink) -> MaintenanceReport | None:
    jobs = link.jobs
    with link.connection() as conn, conn.transaction():
        got = conn.execute(jobs.maintenance_lock, {"schema": link.schema}).fetchone()
        if not got or not got[0]:
            return None
        reclaimed = conn.execute(jobs.reclaim_leases).fetchone()[0]
        dead = conn.execute(
            jobs.dead_purge_older, {"seconds": settings.delete_after_days * 86400}
        ).fetchone()[0]
        results, groups = _delete_results(app, settings, conn)
        swept = sweep(link.transport.pool, link.sql, interval=0) or {}
        report = MaintenanceReport(
            leases_reclaimed=reclaimed,
            messages_expired=swept.get("messages", 0),
            queues_removed=swept.get("queues", 0),
            results_deleted=results,
            groups_deleted=groups,
            dead_letters_deleted=dead,
        )
        conn.execute(
            jobs.maintenance_record,
            {"value": " ".join(f"{k}={v}" for k, v in report.as_dict().items())},
        )
    if any(report.as_dict().values()):
        logger.info("maintenance: %s", report.as_dict())
    return report


def _delete_results(app: Celery, settings: Settings, conn: Any) -> tuple[int, int]:
    backend = app.backend
    task_cls = getattr(backend, "task_cls", None)
    if task_cls is None:
        return 0, 0
    backend.ResultSession().close()  # the tables exist from here on
    # Celery stores date_done as a naive timestamp: compare in the session's own zone.
    params = {
        "completed": settings.archive_completed_after_seconds,
        "failed": settings.delete_after_days * 86400,
    }
    results = conn.execute(
        f"""
        WITH gone AS (
            DELETE FROM {qualified_name(task_cls.__table__)}
            WHERE (status = 'SUCCESS'
                   AND date_done < localtimestamp - make_interval(secs => %(completed)s))
               OR (status IN ('FAILURE', 'REVOKED')
                   AND date_done < localtimestamp - make_interval(secs => %(failed)s))
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        params,
    ).fetchone()[0]
    group_cls = getattr(backend, "taskset_cls", None)
    groups = 0
    if group_cls is not None:
        groups = conn.execute(
            f"""
            WITH gone AS (
                DELETE FROM {qualified_name(group_cls.__table__)}
                WHERE date_done < localtimestamp - make_interval(secs => %(failed)s)
                RETURNING 1
            )
            SELECT count(*) FROM gone
            """,
            params,
        ).fetchone()[0]
    return results, groups


def last_run(link: BrokerLink) -> tuple[str, Any] | None:
    rows = link.fetch(link.jobs.maintenance_last)
    return (rows[0][0], rows[0][1]) if rows else None


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
