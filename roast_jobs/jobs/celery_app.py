"""The Celery app of roast-jobs, configured from Settings to run on the app's PostgreSQL."""

from __future__ import annotations

from typing import Any

from celery import Celery

import roast_jobs.broker  # noqa: F401 - registers postgresql:// for kombu
from roast_jobs.config import Settings, get_settings
from roast_jobs.jobs.maintenance import MaintenanceStep
from roast_jobs.jobs.results import sqlalchemy_url
from roast_jobs.jobs.singleton import SingletonTask


def celery_config(settings: Settings) -> dict[str, Any]:
    url = settings.require_database_url()
    return {
        "broker_url": url,
        "broker_transport_options": {
            "schema": settings.broker_schema,
            "lease_seconds": settings.lease_seconds,
            "max_deliveries": settings.max_deliveries,
            "polling_interval": settings.poll_interval,
            "native_delay": settings.native_delay,
        },
        "broker_connection_retry_on_startup": True,
        "result_backend": "roast_jobs.jobs.results:ResultBackend",
        "database_url": sqlalchemy_url(url),
        "database_table_schemas": {"task": settings.result_schema, "group": settings.result_schema},
        "database_engine_options": {"pool_pre_ping": True},
        "result_extended": True,
        # The results live in the same PostgreSQL as the queue: ride out a restart or a
        # failover (about a minute of backoff) instead of failing a task because its
        # STARTED state could not be written - Celery acks such a task and it never runs.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 5000,
        # Crash safety: a task is acked when it finishes; a lost child puts it back (and the
        # broker buries it after max_deliveries tries).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        # One run may take this long (the plan's expireInSeconds); per task or per send
        # overridable with time_limit.
        "task_time_limit": settings.time_limit,
        "worker_hijack_root_logger": False,
    }


def make_celery(
    settings: Settings | None = None,
    main: str = "roast_jobs",
    set_as_current: bool = True,
    **overrides: Any,
) -> Celery:
    """``set_as_current`` False: an app for a library's own use (``JobService``), which must
    not become the process's ``current_app`` in place of the application's."""
    settings = settings or get_settings()
    # Plain @app.task tasks get singleton-aware sends: a duplicate returns the holder's result.
    app = Celery(main, task_cls=SingletonTask, set_as_current=set_as_current)
    app.conf.update(celery_config(settings), **overrides)
    # Retention and clean-up, one worker at a time.
    app.steps["worker"].add(MaintenanceStep)
    return app
