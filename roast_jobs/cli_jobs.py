"""``roast-jobs jobs|dead|maintenance``: the job-state API and dead letters from a shell.

They work on the Celery app given with ``-A/--app`` (as for ``celery -A``: its broker URL,
transport options and result settings) or else on roast-jobs' own app on ``DATABASE_URL``
(schemas from ``ROAST_JOBS_*``); ``--schema`` names another broker schema. They create
nothing: pointed at a broker schema that does not exist, they say so and exit non-zero.
Every error is one line.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg

from roast_jobs.config import get_settings
from roast_jobs.logs import mask_secrets

if TYPE_CHECKING:
    from celery import Celery

F = TypeVar("F", bound=Callable[..., Any])

# Where -A/--app and --schema are kept: ctx.meta is shared by a group and its commands.
APP_KEY = "roast_jobs.app"
SCHEMA_KEY = "roast_jobs.schema"
TARGET_HINT = "point at the app's broker with -A/--app MODULE[:ATTR] or --schema NAME"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (psycopg's carry DETAIL and HINT lines), its
    secrets masked."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return mask_secrets(text) or type(exc).__name__


def check_database(url: str, what: str = "DATABASE_URL") -> None:
    """Fail at once, in one line, when ``url`` (named ``what``) is not a reachable
    PostgreSQL: before kombu, which would retry for seconds and then print a traceback."""
    from roast_jobs.broker.connections import split_url

    try:
        libpq, _ = split_url(url)
    except ValueError as exc:
        raise click.ClickException(f"bad {what}: {mask_secrets(str(exc))}") from None
    try:
        with psycopg.connect(libpq, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {mask_secrets(url)}: {mask_secrets(reason)}; "
            f"check {what} "
            "(postgresql://user:pass@host:5432/db) and that the server runs"
        ) from None


def load_app(spec: str) -> Celery:
    """The Celery app named ``spec``, found as ``celery -A`` finds it: ``module:attr``, or
    ``module`` (its ``app`` or ``celery``, its ``celery`` submodule, or any Celery in it)."""
    from celery import Celery
    from celery.app.utils import find_app

    try:
        found = find_app(spec)
    except Exception as exc:  # the user's module may raise anything while importing
        raise click.ClickException(
            f"cannot load the Celery app {spec!r}: {one_line(exc)}; give -A module or "
            "module:attr, importable from the current directory"
        ) from None
    if not isinstance(found, Celery):
        raise click.ClickException(
            f"{spec!r} is a {type(found).__name__}, not a Celery app: give -A module:attr "
            "naming the app"
        )
    return found


def _target_app() -> Celery:
    """The app of -A/--app or roast-jobs' own, with --schema applied; its database checked."""
    ctx = click.get_current_context()
    spec: str | None = ctx.meta.get(APP_KEY)
    schema: str | None = ctx.meta.get(SCHEMA_KEY)
    if spec:
        app = load_app(spec)
        url = app.conf.broker_write_url or app.conf.broker_url
        if not url:
            raise click.ClickException(
                f"the app {spec!r} sets no broker_url: set it to the PostgreSQL of the "
                "roast-jobs broker (postgresql://user:pass@host:5432/db)"
            )
        check_database(str(url), f"the broker_url of {spec!r}")
    else:
        settings = get_settings()
        if not settings.database_url:
            raise click.ClickException(
                "DATABASE_URL is not set: point it at the app's PostgreSQL "
                "(postgresql://user:pass@host:5432/db), or give the Celery app with -A/--app"
            )
        check_database(settings.database_url)
        from roast_jobs.tasks.app import make_celery

        app = make_celery(settings, main="roast-jobs-cli")
    if schema:
        # Transport options win over the broker URL's query string.
        options = dict(app.conf.broker_transport_options or {})
        app.conf.broker_transport_options = {**options, "schema": schema}
    return app


@contextmanager
def _errors() -> Iterator[None]:
    """The job API's errors as one-line CLI errors."""
    from kombu.exceptions import KombuError
    from sqlalchemy.exc import SQLAlchemyError

    from roast_jobs.jobs import JobError
    from roast_jobs.jobs.link import BrokerSchemaMissing

    try:
        yield
    except BrokerSchemaMissing as exc:
        raise click.ClickException(f"{exc}: {TARGET_HINT}") from None
    except (JobError, ValueError, TypeError, psycopg.Error, KombuError, SQLAlchemyError) as exc:
        raise click.ClickException(one_line(exc)) from None


@contextmanager
def _manager(read_only: bool = False) -> Iterator[Any]:
    """A started JobManager of the target app; its configuration warnings on stderr."""
    from roast_jobs.jobs import JobManager

    app = _target_app()
    with _errors():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jm = JobManager(app).start(create=False)
        for warning in caught:
            click.echo(f"warning: {one_line(warning.message)}", err=True)
        try:
            if read_only:
                _skip_missing_results(jm)
            yield jm
        finally:
            jm.stop()


def _skip_missing_results(jm: Any) -> None:
    """With no result table yet, read the broker's tables alone: the result backend would
    create its schema and tables on first use, and a look must create nothing."""
    table = jm.link.result_table
    if table is None:
        return
    from roast_jobs.jobs.sql import TABLE_EXISTS

    [(exists,)] = jm.link.fetch(TABLE_EXISTS, table=table)
    if not exists:
        # The app's backend is built on first use, after this: start() read only the
        # configuration, since building a database backend creates its tables.
        jm.app.conf.result_backend = "disabled"


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


@click.group()
def jobs() -> None:
    """Look at and steer jobs (Celery tasks on the roast-jobs broker) by id. get, retry
    and cancel take a RoastMyPost job's id too (a "Job" row of DATABASE_URL, without -A).

    \b
    roast-jobs jobs -A proj.celery:app get JOB_ID
    roast-jobs jobs --schema jobs status
    """


@jobs.command("get")
@click.argument("job_id")
@_json_option
def jobs_get(job_id: str, as_json: bool) -> None:
    """A job's state, times, worker, result or error."""
    from roast_jobs import cli_domain  # a RoastMyPost "Job" row's id: the domain's view

    if cli_domain.get_domain_job(job_id, as_json):
        return
    with _manager(read_only=True) as jm:
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
    with _manager(read_only=True) as jm:
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
@_json_option
def jobs_retry(job_id: str, as_json: bool) -> None:
    """Send a failed, cancelled, expired or dead-lettered job again."""
    from roast_jobs import cli_domain

    if cli_domain.retry_domain_job(job_id, as_json):
        return
    with _manager() as jm:
        new_id = jm.retry_job(job_id)
    if as_json:
        _echo_json({"id": new_id, "retried": job_id})
    else:
        click.echo(new_id)


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--terminate", is_flag=True, help="Kill the process running it.")
@click.option("--reason", default=None, help="Why (kept on a RoastMyPost job's row).")
@_json_option
def jobs_cancel(job_id: str, terminate: bool, reason: str | None, as_json: bool) -> None:
    """Remove a waiting or delayed job; revoke a running one. A RoastMyPost job is
    CANCELLED for good, its running task killed."""
    from roast_jobs import cli_domain

    if cli_domain.cancel_domain_job(job_id, reason, as_json):
        return
    with _manager() as jm:
        job = jm.cancel_job(job_id, terminate=terminate)
    if as_json:
        _echo_json(job.as_dict())
    else:
        click.echo(f"{job_id}: {job.state.value}")


@click.group()
def dead() -> None:
    """Dead letters: messages that could not be delivered, with why."""


@contextmanager
def _dead_letters() -> Iterator[Any]:
    from roast_jobs.jobs import DeadLetters
    from roast_jobs.jobs.link import BrokerLink

    app = _target_app()
    with _errors():
        # Dead letters are broker rows: the app's result settings do not matter here.
        link = BrokerLink(app, create=False)
        try:
            yield DeadLetters(link)
        finally:
            link.close()


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
    """Send dead letters back to their queues. One per singleton key goes; the others, and
    those whose key a live job holds, are held back (listed, with why)."""
    _selection(ids, all_)
    with _dead_letters() as dl:
        moved = dl.redrive(list(ids), queue=queue, all=all_)
    for message_id, to_queue, task_id in moved:
        click.echo(f"redriven to {to_queue} as message {message_id} (task {task_id or '-'})")
    for held in moved.held:
        click.echo(
            f"held back dead letter {held.dead_id} (task {held.task_id or '-'}): {held.reason}"
        )
    click.echo(f"{len(moved)} redriven, {len(moved.held)} held back")


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


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:  # a command's own option wins over its group's
            ctx.meta[key] = value
        return value

    return store


def _target_options() -> list[click.Parameter]:
    return [
        click.Option(
            ["-A", "--app"],
            metavar="MODULE[:ATTR]",
            expose_value=False,
            callback=_remember(APP_KEY),
            help="The Celery app, as for celery -A: its broker and result settings "
            "[default: roast-jobs' own app on DATABASE_URL].",
        ),
        click.Option(
            ["--schema"],
            metavar="NAME",
            expose_value=False,
            callback=_remember(SCHEMA_KEY),
            help="The broker schema [default: the app's transport option 'schema'].",
        ),
    ]


def register(cli: click.Group) -> None:
    for group in (jobs, dead, maintenance):
        # Before or after the command name: `jobs -A proj get ID` and `jobs get ID -A proj`.
        for command in (group, *group.commands.values()):
            command.params.extend(_target_options())
        cli.add_command(group)
