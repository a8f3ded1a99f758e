"""What JobService answers and refuses: the created jobs, batches and imports, and the
errors of requests it will not carry out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from roast_jobs.db.models import JobStatus


class ServiceError(Exception):
    """A request the service refuses; the message says why."""


class SystemPaused(ServiceError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"job creation is paused: {reason} (end the SystemPause to resume)")
        self.reason = reason


class InvalidRequest(ServiceError, ValueError):
    pass


@dataclass(frozen=True)
class CreatedJob:
    id: str
    evaluation_id: str
    backend: str
    status: str = JobStatus.PENDING.value
    broker_job_id: str | None = None
    batch_id: str | None = None
    document_id: str | None = None
    agent_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CreatedBatch:
    id: str
    agent_id: str
    job_count: int
    fan_out: str  # "inline" (in the creating transaction), "task" or "chunks"
    task_id: str | None = None
    jobs: list[CreatedJob] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    expires_at: datetime | None = None
    target_count: int | None = None
    is_ephemeral: bool = False
    agent_is_ephemeral: bool = False  # made for this batch (and deleted with it)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["jobs"] = [j.as_dict() for j in self.jobs]
        return out


@dataclass(frozen=True)
class CreatedImport:
    backend: str
    task_id: str | None = None
    created: bool = True  # False: this URL's import was already in flight (task_id is it)
    result: dict[str, Any] | None = None  # the inline import's outcome (legacy path)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
