"""``roast-jobs worker|beat|flags|batch|import``, and RoastMyPost ``Job`` rows in ``jobs``.

The domain commands work on ``DATABASE_URL``'s database through ``JobService``: jobs land
on the backend the feature flags pick (the legacy ``Job`` poller or Celery). ``jobs
get|retry|cancel ID`` call in here first: an id of a ``Job`` row is handled as a domain
job, any other id as a Celery task, as before (``cli_jobs``). Every user error is one
line, and writes nothing.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import psycopg

from roast_jobs.cli_jobs import (
    APP_KEY,
    SCHEMA_KEY,
    _echo_json,
    _json_option,
    check_database,
    one_line,
)
from roast_jobs.config import get_settings

if TYPE_CHECKING:
    from roast_jobs.service.job_service import JobService

WORKER_APP = "roast_jobs.tasks.worker"
# roast_jobs.tasks.worker.ALL_QUEUES, spelled out: importing that module builds the app,
# which needs DATABASE_URL and a second of imports just to print --help (a test checks).
ALL_QUEUES = "evaluation,batch,import,maintenance"
SCHEDULE_FILE = "celerybeat-schedule"


# -- plumbing ------------------------------------------------------------------------


def _database_url() -> str:
    from pydantic import ValidationError

    try:
        url = get_settings().require_database_url()
    except ValidationError as exc:  # e.g. ROAST_JOBS_USE_CELERY=maybe
        raise click.ClickException(f"bad environment: {one_line(exc)}") from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    check_database(url)
    return url


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's request can raise; imported only when something was raised."""
    from kombu.exceptions import KombuError

    from roast_jobs.domain import job_records
    from roast_jobs.domain.evaluations import NotFound
    from roast_jobs.domain.payloads import InvalidPayload
    from roast_jobs.domain.url_safety import ArticleImportError
    from roast_jobs.jobs.errors import JobError
    from roast_jobs.service.flags import FlagError
    from roast_jobs.service.job_service import ServiceError

    return (
        ServiceError,
        NotFound,
        job_records.JobNotFound,
        job_records.InvalidJobState,
        InvalidPayload,
        ArticleImportError,
        FlagError,
        JobError,
        KombuError,
    )


@contextmanager
def _errors() -> Iterator[None]:
    """The service's refusals and database errors as one-line CLI errors."""
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        yield
    except (DBAPIError, psycopg.Error) as exc:
        orig = getattr(exc, "orig", None) or exc
        # psycopg's message goes on with LINE/caret lines; SQLAlchemy's with the SQL.
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        if isinstance(orig, psycopg.errors.UndefinedTable):
            first += ": run `roast-jobs db upgrade` on this database first"
        raise click.ClickException(first) from None
    except SQLAlchemyError as exc:
        raise click.ClickException(one_line(exc)) from None
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            raise click.ClickException(one_line(exc)) from None
        raise


@contextmanager
def _service(url: str) -> Iterator[JobService]:
    with _errors():
        from roast_jobs.service.job_service import JobService

        service = JobService(url)
        try:
            yield service
        finally:
            service.close()


def _exec_celery(*args: str) -> NoReturn:
    cmd = [sys.executable, "-m", "celery", *args]
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
    _database_url()
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
    _database_url()
    if schedule is None:
        folder = Path(get_settings().data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        schedule = str(folder / SCHEDULE_FILE)
    _exec_celery("-A", app_name, "beat", "-s", schedule, "-l", loglevel, *celery_args)


# -- flags ---------------------------------------------------------------------------


def _who() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _by_option(fn: Any) -> Any:
    return click.option(
        "--by", "who", default=None, help="Who makes the change [default: $USER@hostname]."
    )(fn)


def _env_name(flag: str) -> str:
    return f"ROAST_JOBS_{flag.upper()}"  # the Settings field of the override has its name


def _shown(value: Any) -> str:
    import json

    return "unset" if value is None else json.dumps(value)


@click.group()
def flags() -> None:
    """Feature flags: which backend (legacy or Celery) new jobs go to.

    \b
    roast-jobs flags rollout 10      (10% of new evaluations to Celery)
    roast-jobs flags set use_celery off
    """


@flags.command("show")
@click.option(
    "--history",
    "history_count",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="How many recent changes to list.",
)
@_json_option
def flags_show(history_count: int, as_json: bool) -> None:
    """The flags' values and mode, and their recent changes (newest first)."""
    from roast_jobs.service import flags as f

    url = _database_url()
    with _errors():
        table = f.read_table(url)
        changes = f.history(url, limit=history_count)
    current = f.from_values(table)
    if as_json:
        _echo_json({**current.as_dict(), "table": table, "history": changes})
        return
    effective = {f.USE_CELERY: current.use_celery, f.ROLLOUT_PERCENT: current.rollout_percent}
    for name, value in effective.items():
        if name in current.overridden:
            note = f"{_env_name(name)} overrides the table's {_shown(table.get(name))} here"
        else:
            note = "" if name in table else "default: never set"
        click.echo(f"{name:<24}{_shown(value):<8}{f'({note})' if note else ''}".rstrip())
    click.echo(f"{'mode':<24}{current.mode}")
    if changes:
        click.echo("recent changes:")
    for c in changes:
        click.echo(
            f"  {c['changedAt']:%Y-%m-%d %H:%M:%S}  {c['changedBy']}  {c['flagName']}: "
            f"{_shown(c['oldValue'])} -> {_shown(c['newValue'])}"
        )


def _report(changes: list[Any], names: list[str], url: str) -> None:
    from roast_jobs.service import flags as f

    for c in changes:
        click.echo(f"{c.name}: {_shown(c.old)} -> {_shown(c.new)} (by {c.changed_by})")
    for name in names:
        if name not in {c.name for c in changes}:
            click.echo(f"{name} unchanged")
    with _errors():
        current = f.from_values(f.read_table(url))
    click.echo(f"mode: {current.mode}")
    for name in current.overridden:
        click.echo(f"note: {_env_name(name)} is set here and overrides {name}", err=True)


@flags.command("set")
@click.argument("name")
@click.argument("value")
@_by_option
def flags_set(name: str, value: str, who: str | None) -> None:
    """Set one flag: use_celery on|off, celery_rollout_percent 0-100."""
    from roast_jobs.service import flags as f

    url = _database_url()
    with _errors():
        changes = f.set_flags({name: value}, who if who is not None else _who(), url)
    _report(changes, [name], url)


@flags.command("rollout")
@click.argument("percent")
@_by_option
def flags_rollout(percent: str, who: str | None) -> None:
    """Send PERCENT (0-100) of new jobs to Celery: use_celery on (off for 0) and
    celery_rollout_percent, in one change."""
    from roast_jobs.service import flags as f

    url = _database_url()
    with _errors():
        changes = f.rollout(percent, who if who is not None else _who(), url)
    _report(changes, [f.USE_CELERY, f.ROLLOUT_PERCENT], url)


# -- batches -------------------------------------------------------------------------


def _target_count(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    # Parsed here, not by click.INT: a bad count is a one-line error with exit 1.
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise click.ClickException(f"--target-count takes a number 1-100, not {value!r}") from None


def _ids_from(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _ids_from_file(path: str) -> list[str]:
    """One id per line; blank lines and # comments ignored."""
    try:
        text = Path(path).read_text() if path != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise click.ClickException(f"{path} holds no document ids")
    return ids


def _documents(documents: tuple[str, ...], documents_file: str | None) -> list[str] | None:
    if documents and documents_file is not None:
        raise click.ClickException("give --documents or --documents-file, not both")
    if documents_file is not None:
        return _ids_from_file(documents_file)
    if documents:
        ids = _ids_from(documents)
        if not ids:
            raise click.ClickException("--documents names no document ids")
        return ids
    return None


_FAN_OUT = {
    "inline": "created with the batch, in one transaction",
    "task": "the batch task creates them (task {task_id})",
    "chunks": "created here, chunk by chunk (Celery is off)",
}


@click.group()
def batch() -> None:
    """Batches: one agent evaluating many documents."""


@batch.command("create")
@click.option("--agent", "agent_id", required=True, help="The agent's id.")
@click.option(
    "--target-count",
    callback=_target_count,
    metavar="N",
    help="N (1-100) jobs over documents the agent already evaluated (sampled, repeated).",
)
@click.option(
    "--documents",
    multiple=True,
    metavar="ID[,ID...]",
    help="The documents to evaluate; repeat the option or separate with commas.",
)
@click.option(
    "--documents-file",
    metavar="FILE",
    help="Document ids, one a line (# comments and blank lines ignored; - for stdin).",
)
@click.option("--name", default=None, help="The batch's name.")
@_json_option
def batch_create(
    agent_id: str,
    target_count: int | None,
    documents: tuple[str, ...],
    documents_file: str | None,
    name: str | None,
    as_json: bool,
) -> None:
    """Create a batch and its jobs, on the backend the flags pick for each job."""
    document_ids = _documents(documents, documents_file)
    if (target_count is None) == (document_ids is None):
        raise click.ClickException(
            "give either --target-count or the documents (--documents or --documents-file)"
        )
    url = _database_url()
    with _service(url) as service:
        created = service.create_batch_jobs(
            agent_id, target_count=target_count, document_ids=document_ids, name=name
        )
    if as_json:
        _echo_json(created.as_dict())
        return
    click.echo(f"batch {created.id}: {created.job_count} jobs for agent {created.agent_id}")
    click.echo(f"fan-out: {created.fan_out}, {_FAN_OUT[created.fan_out].format(**vars(created))}")
    if created.jobs:
        backends = [j.backend for j in created.jobs]
        click.echo(
            f"backends: legacy {backends.count('legacy')}, celery {backends.count('celery')}"
        )


@batch.command("show")
@click.argument("batch_id")
@_json_option
def batch_show(batch_id: str, as_json: bool) -> None:
    """A batch's progress: its jobs by status and backend, and when it completed."""
    url = _database_url()
    with _service(url) as service:
        p = service.batch_progress(batch_id)
    if as_json:
        _echo_json(p.as_dict())
        return
    rows = [
        ("batch", p.id),
        ("name", p.name or "-"),
        ("agent", p.agent_id),
        ("created", f"{p.created_at:%Y-%m-%d %H:%M:%S}"),
        ("jobs", f"{p.created} of {p.expected} created, {p.total - p.created} retries"),
        (
            "status",
            f"pending {p.pending}, running {p.running}, completed {p.completed}, "
            f"failed {p.failed}, cancelled {p.cancelled}",
        ),
        ("backends", f"legacy {p.legacy}, celery {p.celery}"),
        ("progress", f"{p.progress:.1f}%"),
        ("completedAt", f"{p.completed_at:%Y-%m-%d %H:%M:%S}" if p.completed_at else "-"),
    ]
    for key, value in rows:
        click.echo(f"{key:>11}: {value}")


# -- import --------------------------------------------------------------------------


@click.command("import")
@click.argument("url")
@click.option(
    "--agent",
    "agents",
    multiple=True,
    metavar="ID[,ID...]",
    help="Agents to evaluate the document with; repeat or separate with commas.",
)
@_json_option
def import_article(url: str, agents: tuple[str, ...], as_json: bool) -> None:
    """Import the article at URL as a document and queue its evaluations.

    On Celery the import task does it (one per URL at a time); with Celery off it runs
    here, now."""
    database = _database_url()
    with _service(database) as service:
        created = service.create_import_job(url, _ids_from(agents))
    if as_json:
        _echo_json(created.as_dict())
        return
    if created.task_id is not None and created.created:
        click.echo(f"queued import task {created.task_id}")
        return
    if created.task_id is not None:
        # The task in flight evaluates with its own request's agents, not these.
        note = " (--agent not added to it)" if agents else ""
        click.echo(f"already queued for this URL: import task {created.task_id}{note}")
        return
    result = created.result or {}
    click.echo(f"imported document {result['documentId']}: {result['document']['title']!r}")
    for job in result.get("jobs", []):
        click.echo(f"job {job['id']} ({job['backend']}) for agent {job['agent_id']}")


# -- RoastMyPost jobs in `roast-jobs jobs` -------------------------------------------


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
    with _service(url) as service:
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
    with _service(url) as service:
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
    with _service(url) as service:
        job = service.cancel_job(job_id, reason=reason)
    if as_json:
        _echo_json(job)
    else:
        click.echo(f"{job_id}: {job['status']}")
    return True


def register(cli: click.Group) -> None:
    for command in (worker, beat, flags, batch, import_article):
        cli.add_command(command)
