"""pg-boss-class job features for Celery tasks on the roast-jobs broker.

- ``enqueue_in(session)``: send tasks inside the caller's transaction;
- singleton keys: ``apply_async(..., singleton_key="batch-42")`` (``SingletonTask``);
- ``JobManager``: send (one or thousands), get a job's state, queue status, retry, cancel;
- ``RoastTask`` / ``RetryPolicy``: retries with backoff and jitter;
- ``DeadLetters``: list, inspect, redrive, purge;
- ``run_maintenance``: retention and clean-up, run periodically by the workers.
"""

from roast_jobs.broker.capture import Published

from .bulk import TaskCall
from .config_check import JobConfigWarning, MisconfiguredApp
from .dead_letters import DeadLetter, DeadLetters, HeldBack, Redriven, RedriveResult
from .errors import DeadLetterNotFound, InvalidTransition, JobError, JobNotFound, NotOnThisBroker
from .link import BrokerSchemaMissing
from .maintenance import MaintenanceReport, run_maintenance
from .manager import JobId, JobManager, QueueStatus
from .retry import RetryPolicy, RoastTask
from .singleton import SingletonTask
from .state import Job, JobState
from .transaction import ack_in, enqueue_in, enqueue_in_async

__all__ = [
    "BrokerSchemaMissing",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetters",
    "HeldBack",
    "InvalidTransition",
    "Job",
    "JobConfigWarning",
    "JobError",
    "JobId",
    "JobManager",
    "JobNotFound",
    "JobState",
    "MaintenanceReport",
    "MisconfiguredApp",
    "NotOnThisBroker",
    "Published",
    "QueueStatus",
    "RedriveResult",
    "Redriven",
    "RetryPolicy",
    "RoastTask",
    "SingletonTask",
    "TaskCall",
    "ack_in",
    "enqueue_in",
    "enqueue_in_async",
    "run_maintenance",
]
