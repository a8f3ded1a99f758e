"""The Celery app of the RoastMyPost domain: ``celery -A roast_jobs.tasks.worker worker``
(``roast-jobs worker``) runs the evaluation, batch, import and maintenance tasks, each on
its own queue; ``roast-jobs beat`` schedules the maintenance task."""

from __future__ import annotations

from roast_jobs.config import get_settings
from roast_jobs.jobs.celery_app import make_celery
from roast_jobs.service.job_service import MAINTENANCE_TASK, QUEUES
from roast_jobs.tasks import worker_logs

worker_logs.install()  # JSON logs, job fields, masked secrets (ROAST_JOBS_LOG_FORMAT)

app = make_celery(
    main="roast_jobs",
    include=[
        "roast_jobs.tasks.evaluation",
        "roast_jobs.tasks.batch",
        "roast_jobs.tasks.imports",
        "roast_jobs.tasks.maintenance",
    ],
    task_routes={name: {"queue": queue} for name, queue in QUEUES.items()},
    task_default_queue="evaluation",
    # Evaluations run for minutes: one at a time per child keeps the rest for others.
    worker_prefetch_multiplier=1,
    beat_schedule={
        "roast-jobs-maintenance": {
            "task": MAINTENANCE_TASK,
            "schedule": get_settings().maintenance_interval,
            "options": {"queue": QUEUES[MAINTENANCE_TASK], "expires": 300},
        }
    },
)

#: The queues a `roast-jobs worker` consumes by default.
ALL_QUEUES = ",".join(dict.fromkeys(QUEUES.values()))
