"""``roast-jobs worker|beat|flags|batch|import``, and RoastMyPost ``Job`` rows in ``jobs``.

The domain commands work on ``DATABASE_URL``'s database through ``JobService``: jobs land
on the backend the feature flags pick (the legacy ``Job`` poller or Celery). ``jobs
get|retry|cancel ID`` call in here first: an id of a ``Job`` row is handled as a domain
job, any other id as a Celery task, as before (``cli_jobs``). Every user error is one
line, and writes nothing.

Here: ``worker``, ``beat`` and ``register``; the other commands are in ``cli_flags``
(flags) and ``cli_batches`` (batch, import), the domain jobs of ``jobs`` in
``cli_domain_jobs``, what they share in ``cli_service``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from roast_jobs.cli_api import api_command, keys, users
from roast_jobs.cli_batches import batch, import_article
from roast_jobs.cli_domain_jobs import (
    cancel_domain_job,
    domain_job_url,
    get_domain_job,
    retry_domain_job,
)
from roast_jobs.cli_flags import flags
from roast_jobs.cli_mcp import mcp_command
from roast_jobs.cli_metrics import metrics_command
from roast_jobs.cli_migrate import migrate
from roast_jobs.cli_rollout import rollout
from roast_jobs.cli_service import database_url
from roast_jobs.config import get_settings

__all__ = [
    "ALL_QUEUES",
    "beat",
    "cancel_domain_job",
    "domain_job_url",
    "get_domain_job",
    "register",
    "retry_domain_job",
    "worker",
]

WORKER_APP = "roast_jobs.tasks.worker"
# roast_jobs.tasks.worker.ALL_QUEUES, spelled out: importing that module builds the app,
# which needs DATABASE_URL and a second of imports just to print --help (a test checks).
ALL_QUEUES = "evaluation,batch,import,maintenance"
SCHEDULE_FILE = "celerybeat-schedule"


def _exec_celery(*args: str) -> NoReturn:
    cmd = [sys.executable, "-m", "celery", *args]
    if get_settings().log_format == "json":
        # Nothing but JSON lines: no command line, no printed banner (-q; the worker logs
        # its banner as a record, roast_jobs/tasks/worker_logs.py).
        cmd.insert(3, "-q")
    else:
        click.echo(" ".join(cmd[1:]), err=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)  # celery gets our pid, so signals reach it directly


# -- worker, beat --------------------------------------------------------------------


def _queues_for(app_name: str, queues: str | None) -> str | None:
    """The -Q to pass: every domain queue by default; another app keeps its own."""
    if app_name != WORKER_APP:
        return queues
    if queues is None:
        return ALL_QUEUES
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in ALL_QUEUES.split(",")]
    if unknown or not names:
        # A typo would leave the worker idle, consuming a queue nothing is sent to.
        raise click.ClickException(
            f"unknown queue {', '.join(map(repr, unknown)) or repr(queues)} for {WORKER_APP}; "
            f"its queues are {ALL_QUEUES}"
        )
    return ",".join(names)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--app", "-A", "app_name", default=WORKER_APP, show_default=True, help="The Celery app to run."
)
@click.option(
    "--queues",
    "-Q",
    default=None,
    help=f"Comma-separated queues to consume [default: {ALL_QUEUES} with the default app; "
    "another app's own default].",
)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--pool", "-P", default="prefork", show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    app_name: str,
    queues: str | None,
    concurrency: int,
    pool: str,
    loglevel: str,
    celery_args: tuple[str, ...],
) -> None:
    """Run `celery -A APP worker` on DATABASE_URL; extra arguments go to celery.

    \b
    roast-jobs worker -Q evaluation -c 4
    roast-jobs worker -A roast_jobs.tasks.demo     (the demo's tasks)
    """
    queues = _queues_for(app_name, queues)
    database_url()
    args = ["-A", app_name, "worker", "-P", pool, "-c", str(concurrency), "-l", loglevel]
    if queues:
        args += ["-Q", queues]
    _exec_celery(*args, *celery_args)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--app", "-A", "app_name", default=WORKER_APP, show_default=True, help="The Celery app."
)
@click.option(
    "--schedule",
    "-s",
    default=None,
    help=f"Where beat keeps the last run times [default: {SCHEDULE_FILE} in "
    "ROAST_JOBS_DATA_DIR, .roast-jobs/ unless set].",
)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(app_name: str, schedule: str | None, loglevel: str, celery_args: tuple[str, ...]) -> None:
    """Run `celery -A APP beat`: it sends the maintenance task every
    ROAST_JOBS_MAINTENANCE_INTERVAL seconds (retention, reconciliation of Celery jobs,
    batch completion). Run one beat per deployment; extra arguments go to celery."""
    database_url()
    if schedule is None:
        folder = Path(get_settings().data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        schedule = str(folder / SCHEDULE_FILE)
    _exec_celery("-A", app_name, "beat", "-s", schedule, "-l", loglevel, *celery_args)


def register(cli: click.Group) -> None:
    commands = (worker, beat, flags, batch, import_article, migrate, rollout)
    for command in (*commands, mcp_command, metrics_command, api_command, keys, users):
        cli.add_command(command)
