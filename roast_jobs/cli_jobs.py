"""``roast-jobs jobs|dead|maintenance``: the job-state API and dead letters from a shell.

They talk to the database of ``DATABASE_URL`` (schemas from ``ROAST_JOBS_*``), through
roast-jobs' own Celery app configuration.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from roast_jobs.config import get_settings

F = TypeVar("F", bound=Callable[..., Any])


def _app() -> Any:
    from roast_jobs.tasks.app import make_celery

    return make_celery(get_settings(), main="roast-jobs-cli")


@contextmanager
def _manager() -> Iterator[Any]:
    from roast_jobs.jobs import JobError, JobManager

    try:
        with JobManager(_app()) as manager:
            yield manager
    except (JobError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


@click.group()
def jobs() -> None:
    """Look at and steer jobs (Celery tasks on the roast-jobs broker) by id."""


@jobs.command("get")
@click.argument("job_id")
@_json_option
def jobs_get(job_id: str, as_json: bool) -> None:
    """A job's state, times, worker, result or error."""
    with _manager() as jm:
        job = jm.get_job(job_id).as_dict()
    if as_json:
        _echo_json(job)
        return
    for key, value in job.items():
        if value not in (None, "", 0) or key in ("state", "retry_count"):
            click.echo(f"{key:>15}: {value}")


@jobs.command("status")
@click.option("--queue", "-Q", default=None, help="One queue only.")
@click.option("--window", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Seconds of completed/failed counts.")  # fmt: skip
@_json_option
def jobs_status(queue: str | None, window: float, as_json: bool) -> None:
    """Per queue: waiting, scheduled, active, dead letters, oldest wait, done, failed."""
    with _manager() as jm:
        status = jm.get_queue_status(queue, window_seconds=window)
    if as_json:
        _echo_json({name: s.as_dict() for name, s in status.items()})
        return
    header = ("queue", "waiting", "scheduled", "active", "dead", "oldest(s)", "done", "failed")
    click.echo("  ".join(f"{h:>10}" for h in header))
    for name, s in status.items():
        oldest = f"{s.oldest_waiting_seconds:.1f}" if s.oldest_waiting_seconds is not None else "-"
        cells = (name, s.waiting, s.scheduled, s.active, s.dead_letter, oldest, s.completed,
                 s.failed)  # fmt: skip
        click.echo("  ".join(f"{c!s:>10}" for c in cells))


@jobs.command("retry")
@click.argument("job_id")
def jobs_retry(job_id: str) -> None:
    """Send a failed, cancelled, expired or dead-lettered job again."""
    with _manager() as jm:
        new_id = jm.retry_job(job_id)
    click.echo(new_id)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Kill the process running it.")
def jobs_cancel(job_id: str, terminate: bool) -> None:
    """Remove a waiting or delayed job; revoke a running one."""
    with _manager() as jm:
        job = jm.cancel_job(job_id, terminate=terminate)
    click.echo(f"{job_id}: {job.state.value}")


@click.group()
def dead() -> None:
    """Dead letters: messages that could not be delivered, with why."""


@contextmanager
def _dead_letters() -> Iterator[Any]:
    from roast_jobs.jobs import DeadLetters, JobError

    try:
        with _manager() as jm:
            yield DeadLetters(jm.link)
    except (JobError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@dead.command("list")
@click.option("--queue", "-Q", default=None)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_json_option
def dead_list(queue: str | None, limit: int, as_json: bool) -> None:
    """Newest first."""
    with _dead_letters() as dl:
        letters = dl.list(queue=queue, limit=limit)
    if as_json:
        _echo_json([d.as_dict() for d in letters])
        return
    for d in letters:
        click.echo(
            f"{d.id:>8}  {d.dead_at:%Y-%m-%d %H:%M:%S}  {d.queue:<20} {d.task or '-':<30} "
            f"{d.task_id or '-'}  {d.reason}"
        )
    if not letters:
        click.echo("no dead letters")


@dead.command("show")
@click.argument("dead_id", type=int)
@click.option("--payload", is_flag=True, help="Include the stored message.")
def dead_show(dead_id: int, payload: bool) -> None:
    """One dead letter, with its delivery history."""
    with _dead_letters() as dl:
        _echo_json(dl.get(dead_id).as_dict(with_payload=payload))


def _selection(ids: tuple[int, ...], all_: bool) -> None:
    if ids and all_:
        raise click.UsageError("give ids or --all, not both")
    if not ids and not all_:
        raise click.UsageError("give the ids of the dead letters, or --all")


@dead.command("redrive")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue).")
@click.option("--queue", "-Q", default=None)
def dead_redrive(ids: tuple[int, ...], all_: bool, queue: str | None) -> None:
    """Send dead letters back to their queues."""
    _selection(ids, all_)
    with _dead_letters() as dl:
        moved = dl.redrive(list(ids), queue=queue, all=all_)
    for message_id, to_queue, task_id in moved:
        click.echo(f"redriven to {to_queue} as message {message_id} (task {task_id or '-'})")
    click.echo(f"{len(moved)} redriven")


@dead.command("purge")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --queue).")
@click.option("--queue", "-Q", default=None)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
def dead_purge(ids: tuple[int, ...], all_: bool, queue: str | None, yes: bool) -> None:
    """Delete dead letters for good."""
    _selection(ids, all_)
    if all_ and not yes:
        click.confirm(f"delete every dead letter{' of ' + queue if queue else ''}?", abort=True)
    with _dead_letters() as dl:
        count = dl.purge(list(ids), queue=queue, all=all_)
    click.echo(f"{count} purged")


@click.group()
def maintenance() -> None:
    """The retention and clean-up pass workers run every maintenance_interval."""


@maintenance.command("run")
@_json_option
def maintenance_run(as_json: bool) -> None:
    """Run one pass now (skipped when a worker is running one)."""
    from roast_jobs.jobs import run_maintenance

    with _manager() as jm:
        report = run_maintenance(jm.app, link=jm.link)
    if report is None:
        click.echo("another process is running maintenance right now; skipped")
        return
    if as_json:
        _echo_json(report.as_dict())
        return
    for key, value in report.as_dict().items():
        click.echo(f"{key:>22}: {value}")


def register(cli: click.Group) -> None:
    for group in (jobs, dead, maintenance):
        cli.add_command(group)
