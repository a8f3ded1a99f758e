"""Process-wide settings: the one place that reads the environment."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

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
