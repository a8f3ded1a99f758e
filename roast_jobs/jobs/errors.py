"""Errors of the job-state API: what went wrong and what to do."""

from __future__ import annotations


class JobError(Exception):
    """Base class of the job API's errors."""


class JobNotFound(JobError, LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}: not queued, not dead-lettered, no result")
        self.job_id = job_id


class InvalidTransition(JobError, ValueError):
    """The job's state does not allow the operation (retrying a running job, ...)."""

    def __init__(self, job_id: str, state: str, action: str, allowed: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {state}; {action} needs {allowed}")
        self.job_id = job_id
        self.state = state


class DeadLetterNotFound(JobError, LookupError):
    def __init__(self, dead_id: int) -> None:
        super().__init__(f"no dead letter with id {dead_id}")
        self.dead_id = dead_id


class NotOnThisBroker(JobError, RuntimeError):
    """The Celery app does not use the roast-jobs PostgreSQL broker."""
