"""RoastMyPost ``Job`` rows in ``roast-jobs jobs get|retry|cancel ID``: ``cli_jobs`` calls
in here first; an id of a "Job" row is handled as a domain job, any other id as a Celery
task's, as before."""

from __future__ import annotations

import click
import psycopg

from roast_jobs.cli_jobs import APP_KEY, SCHEMA_KEY, _echo_json
from roast_jobs.cli_service import job_service
from roast_jobs.config import get_settings


def domain_job_url(job_id: str) -> str | None:
    """DATABASE_URL when ``job_id`` is a row of its "Job" table; else None, and the caller
    treats the id as a Celery task's. With -A/--schema the user named a Celery broker, so
    only tasks are looked for there."""
    from roast_jobs.broker.connections import split_url

    meta = click.get_current_context().meta
    url = get_settings().database_url
    if meta.get(APP_KEY) or meta.get(SCHEMA_KEY) or not url:
        return None
    try:
        libpq, _ = split_url(url)
        with psycopg.connect(libpq, connect_timeout=5) as conn:
            # to_regclass: a broker-only database has no "Job" table, and that is fine.
            [(has_table,)] = conn.execute("""SELECT to_regclass('"Job"') IS NOT NULL""")
            found = (
                has_table
                and conn.execute('SELECT 1 FROM "Job" WHERE id = %s', (job_id,)).fetchone()
            )
    except (ValueError, psycopg.Error):
        return None  # the Celery path reports a bad or unreachable DATABASE_URL as before
    return url if found else None


def get_domain_job(job_id: str, as_json: bool) -> bool:
    """``jobs get`` of a "Job" row; False when ``job_id`` is not one."""
    url = domain_job_url(job_id)
    if url is None:
        return False
    with job_service(url) as service:
        job = service.get_job_status(job_id)
    if as_json:
        _echo_json(job)
        return True
    tasks = job.pop("tasks")
    for key, value in job.items():
        if value not in (None, "") or key in ("status", "attempts"):
            click.echo(f"{key:>20}: {value}")
    if tasks:
        click.echo(f"{'tasks':>20}: {', '.join(t['name'] for t in tasks)}")
    return True


def retry_domain_job(job_id: str, as_json: bool) -> bool:
    """``jobs retry`` of a "Job" row: a new job (printed: its id); False when not one."""
    url = domain_job_url(job_id)
    if url is None:
        return False
    with job_service(url) as service:
        created = service.retry_job(job_id)
    if as_json:
        _echo_json(created.as_dict())
    else:
        click.echo(created.id)
    return True


def cancel_domain_job(job_id: str, reason: str | None, as_json: bool) -> bool:
    """``jobs cancel`` of a "Job" row (a running Celery task is killed); False when not
    one."""
    url = domain_job_url(job_id)
    if url is None:
        return False
    with job_service(url) as service:
        job = service.cancel_job(job_id, reason=reason)
    if as_json:
        _echo_json(job)
    else:
        click.echo(f"{job_id}: {job['status']}")
    return True
