"""Process-wide settings: the one place that reads the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Settings read from ``ROAST_JOBS_*`` variables (and ``DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="ROAST_JOBS_", extra="ignore")

    # The application's PostgreSQL, which also holds the broker and the results.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    broker_schema: str = "roast_jobs_broker"
    result_schema: str = "roast_jobs_results"
    lease_seconds: float = 30.0
    max_deliveries: int = 5
    poll_interval: float = 2.0
    native_delay: bool = True

    # Logs of every roast-jobs process (CLI, API, workers): plain text, or one JSON object
    # per line with the job's fields (roast_jobs/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Retry policy of roast-jobs tasks (the plan's pg-boss queue options): retries after a
    # failure, the first delay, doubling with jitter up to retry_delay_max, and the time
    # limit of one run (pg-boss's expireInSeconds). Per task and per send overridable.
    retry_limit: int = Field(default=3, ge=0)
    retry_delay: float = Field(default=30.0, ge=0)
    retry_backoff: bool = True
    retry_delay_max: float = Field(default=3600.0, ge=0)
    time_limit: float = Field(default=3600.0, gt=0)

    # Retention, run by the workers' maintenance pass (pg-boss's archiveCompletedAfterSeconds
    # and deleteAfterDays): successful results go after the first, failed and cancelled
    # results and dead letters after the second.
    archive_completed_after_seconds: float = Field(default=12 * 3600.0, gt=0)
    delete_after_days: float = Field(default=7.0, gt=0)
    maintenance_interval: float = Field(default=60.0, gt=0)

    # -- the RoastMyPost job domain ---------------------------------------------------------
    # Evaluations a user may ask for through the HTTP API, per hour and per month, by
    # plan (RoastMyPost's rate limits; service/quotas.py). Off: no limit, nothing counted.
    quota_enabled: bool = True
    quota_regular_hour: int = Field(default=20, ge=0)
    quota_regular_month: int = Field(default=300, ge=0)
    quota_pro_hour: int = Field(default=100, ge=0)
    quota_pro_month: int = Field(default=1000, ge=0)
    # Feature flags: these override the FeatureFlag table when set (None: the table rules).
    use_celery: bool | None = None
    celery_rollout_percent: int | None = Field(default=None, ge=0, le=100)
    # How often a process re-reads the FeatureFlag table (a change reaches it within this).
    flag_refresh_seconds: float = Field(default=2.0, gt=0)
    # The legacy poller (RoastMyPost's ADAPTIVE_* defaults).
    legacy_poll_interval: float = Field(default=1.0, gt=0)
    legacy_max_workers: int = Field(default=5, ge=1, le=20)
    legacy_kill_grace_seconds: float = Field(default=5.0, ge=0)
    legacy_stale_check_seconds: float = Field(default=300.0, gt=0)
    stale_job_seconds: float = Field(default=1800.0, gt=0)
    # The legacy worker's "WorkerHeartbeat" row: written this often; health and metrics
    # count a worker live while its last beat is younger than the stale threshold.
    legacy_heartbeat_seconds: float = Field(default=10.0, gt=0)
    legacy_heartbeat_stale_seconds: float = Field(default=60.0, gt=0)
    stale_pending_seconds: float = Field(default=600.0, gt=0)
    # Runs of one evaluation job (first run included), on either backend.
    evaluation_max_attempts: int = Field(default=3, ge=1)
    # The evaluator, "module:Class"; the default is offline and deterministic.
    evaluator: str = "roast_jobs.domain.offline_evaluator:OfflineEvaluator"
    # Overrides every agent's time limit (seconds) on both backends: tests, emergencies.
    evaluation_time_limit: float | None = Field(default=None, gt=0)
    # Batches up to this many documents are created inline, larger ones by the batch task.
    batch_inline_max: int = Field(default=100, ge=1)
    batch_chunk_size: int = Field(default=500, ge=1)
    # Article import: private, loopback and link-local addresses are refused unless set.
    import_allow_private: bool = False
    # Networks accepted although not public, comma-separated CIDRs (e.g. an intranet
    # wiki, or 127.0.0.1/32 in tests); narrower than import_allow_private.
    import_allow_networks: str = ""
    import_connect_timeout: float = Field(default=10.0, gt=0)
    import_read_timeout: float = Field(default=30.0, gt=0)
    import_max_bytes: int = Field(default=5_000_000, gt=0)
    import_max_redirects: int = Field(default=5, ge=0)

    # Rollout triggers (`roast-jobs rollout check`): the plan's rollback thresholds, judged
    # over the last rollout_window_seconds. The error rate counts only from
    # rollout_min_finished finished jobs on, so one failure of two rolls nothing back.
    rollout_window_seconds: float = Field(default=900.0, gt=0)
    rollout_max_error_rate: float = Field(default=0.05, ge=0, le=1)
    rollout_min_finished: int = Field(default=20, ge=1)
    rollout_max_queue_depth: int = Field(default=5000, ge=0)
    rollout_stuck_seconds: float = Field(default=3600.0, gt=0)
    rollout_max_p95_seconds: float = Field(default=120.0, gt=0)
    rollout_max_new_dead_letters: int = Field(default=0, ge=0)

    # Where `roast-jobs demo` keeps its embedded PostgreSQL when DATABASE_URL is unset.
    data_dir: str = ".roast-jobs"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "DATABASE_URL is not set: point it at PostgreSQL, "
                "e.g. postgresql://user:pass@localhost:5432/app"
            )
        return self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def override_settings(**values: Any) -> Settings:
    """Change the process-wide settings in place (the demo points them at its own database)."""
    settings = get_settings()
    for name, value in values.items():
        setattr(settings, name, value)
    return settings


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a subprocess (a worker): this process's, plus ``overrides``."""
    return {**os.environ, **overrides}
