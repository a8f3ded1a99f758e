"""The ``roast-jobs`` command: demo, database set-up; jobs, dead letters and
maintenance (``cli_jobs``); worker, beat, flags, batches and imports (``cli_domain``)."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click

from roast_jobs import cli_domain, cli_jobs
from roast_jobs.cli_jobs import check_database
from roast_jobs.config import Settings, get_settings, override_settings
from roast_jobs.logs import LOG_FORMATS, configure_logging, mask_secrets


def database_url(settings: Settings) -> str:
    try:
        url = settings.require_database_url()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    check_database(url)
    return url


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so a killed demo still stops its worker and server."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class MaskedErrors(click.Group):
    """Every command's error message passes through ``mask_secrets`` (a URL's password)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = mask_secrets(exc.message)
            raise


def set_up_logging(log_format: str | None) -> None:
    """Logs to stderr as --log-format (else ROAST_JOBS_LOG_FORMAT) says; the workers this
    process starts inherit the choice through the environment."""
    from pydantic import ValidationError

    if log_format:
        os.environ["ROAST_JOBS_LOG_FORMAT"] = log_format
    try:
        settings: Settings | None = get_settings()
    except ValidationError:
        settings = None  # a bad environment: the command that reads it says so
    if settings is not None and log_format:
        override_settings(log_format=log_format)
    configure_logging(log_format or (settings.log_format if settings else "text"))


@click.group(cls=MaskedErrors)
@click.version_option(package_name="roast-jobs")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default=None,
    help="Logs as text or one JSON object per line [default: ROAST_JOBS_LOG_FORMAT or text].",
)
def cli(log_format: str | None) -> None:
    """roast-jobs: a PostgreSQL broker for Celery, and the RoastMyPost job system on it."""
    set_up_logging(log_format)


@contextmanager
def demo_database() -> Iterator[str]:
    """DATABASE_URL; without it, an embedded PostgreSQL in ROAST_JOBS_DATA_DIR, started
    here and stopped on the way out (the settings of this process point at it)."""
    from roast_jobs import embedded

    settings = get_settings()
    if settings.database_url:
        url = database_url(settings)
        click.echo(f"using DATABASE_URL ({_masked(url)})")
        yield url
        return
    click.echo(f"DATABASE_URL is not set: starting an embedded PostgreSQL in {settings.data_dir}/")
    server = embedded.EmbeddedPostgres(settings.data_dir)
    try:
        try:
            url = server.start()
        except embedded.EmbeddedPostgresError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"embedded PostgreSQL ({server.bindir}) at {_masked(url)}")
        override_settings(database_url=url)
        yield url
    finally:
        server.stop()
        click.echo("embedded PostgreSQL stopped")


@cli.command()
@click.option(
    "--documents",
    "-n",
    type=click.IntRange(min=1, max=5000),
    default=60,
    show_default=True,
    help="Documents in the first batch (the second, after the flip, has a quarter).",
)
@click.option(
    "--percent",
    type=click.IntRange(min=0, max=100),
    default=30,
    show_default=True,
    help="Canary: percent of new jobs sent to Celery before the flip.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the jobs after the last batch is created.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress lines while waiting.")
def demo(documents: int, percent: int, timeout: float, quiet: bool) -> None:
    """The RoastMyPost job flow on both backends: a legacy worker and a Celery worker, a
    canary rollout splitting a batch, an article import, a live flag flip, a summary.

    Uses DATABASE_URL when set (adding rows of its own, deleting nothing); otherwise
    starts an embedded PostgreSQL in ROAST_JOBS_DATA_DIR (default .roast-jobs/) and stops
    it at the end. Exits 0 when every job completed.
    """
    ok = False
    own_database = not get_settings().database_url  # the embedded one: the demo's own
    with terminate_as_interrupt():
        try:
            with demo_database() as url:
                from roast_jobs import demo_domain

                try:
                    ok = demo_domain.run(
                        url,
                        documents=documents,
                        percent=percent,
                        timeout=timeout,
                        quiet=quiet,
                        own_database=own_database,
                        echo=click.echo,
                    )
                except demo_domain.DemoError as exc:
                    raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
    sys.exit(0 if ok else 1)


@cli.command("demo-broker")
@click.option(
    "--tasks",
    "-n",
    type=click.IntRange(min=1, max=100_000),
    default=300,
    show_default=True,
    help="How many tasks to send.",
)
@click.option("--seed", type=int, default=None, help="Seed for priorities and countdowns.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the tasks after the last one is due.",
)
@click.option("--quiet", "-q", is_flag=True, help="One progress line per batch, not per task.")
def demo_broker(tasks: int, seed: int | None, timeout: float, quiet: bool) -> None:
    """The broker alone: a worker and a few hundred tasks with mixed priorities and delays.

    Uses DATABASE_URL when set; otherwise starts an embedded PostgreSQL in
    ROAST_JOBS_DATA_DIR (default .roast-jobs/) and stops it at the end.
    """
    ok = False
    with terminate_as_interrupt():
        try:
            with demo_database() as url:
                from roast_jobs import demo as runner
                from roast_jobs.tasks.demo import app

                try:
                    ok = runner.run(app, url, tasks, seed, timeout, quiet, click.echo)
                except runner.DemoError as exc:
                    raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
    sys.exit(0 if ok else 1)


@cli.command("legacy-worker")
@click.option(
    "--max-workers",
    type=click.IntRange(min=1, max=20),
    default=None,
    help="Jobs run at once [default: ROAST_JOBS_LEGACY_MAX_WORKERS or 5].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds between polls [default: ROAST_JOBS_LEGACY_POLL_INTERVAL or 1].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM/SIGINT, seconds to let running jobs finish before killing them.",
)
def legacy_worker(
    max_workers: int | None, poll_interval: float | None, shutdown_timeout: float
) -> None:
    """Run the legacy poller: claim PENDING legacy jobs, one process per job.

    SIGTERM or Ctrl-C stops claiming and waits for running jobs; a second one kills them
    (their jobs fail and are retried).
    """
    import logging

    from roast_jobs.domain.evaluator import EvaluatorConfigError, load_evaluator
    from roast_jobs.legacy.worker import LegacyWorker

    settings = get_settings()
    url = database_url(settings)
    try:
        load_evaluator()  # a bad ROAST_JOBS_EVALUATOR stops us here, not in every job
    except EvaluatorConfigError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(
        settings.log_format,
        logging.INFO,
        text_format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s",
    )
    legacy = LegacyWorker(
        url,
        max_workers=max_workers or settings.legacy_max_workers,
        poll_interval=poll_interval or settings.legacy_poll_interval,
        shutdown_timeout=shutdown_timeout,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: legacy.stop())
    legacy.run()


@cli.group()
def db() -> None:
    """Database set-up."""


@db.command("init")
def db_init() -> None:
    """Create the broker schema and the result schema (safe to run again)."""
    from roast_jobs.tasks.app import make_celery

    settings = get_settings()
    database_url(settings)
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        conn.connect()  # the transport creates its schema on first connect
    app.backend.ResultSession().close()  # Celery creates its result tables on first session
    click.echo(
        f"broker schema {settings.broker_schema!r} and result schema "
        f"{settings.result_schema!r} are ready"
    )


def _migration_error(exc: Exception) -> click.ClickException:
    """SQLAlchemy's and Alembic's messages run over lines; the first one says it."""
    lines = str(exc).strip().splitlines()
    return click.ClickException(f"migration failed: {lines[0] if lines else type(exc).__name__}")


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the application tables to the newest revision, then run `db init`: one
    command readies a deployment (safe to run again, and from several hosts at once)."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from roast_jobs.db import migrate

    url = database_url(get_settings())
    try:
        before = migrate.current(url)
        migrate.upgrade(url)
        after = migrate.current(url)
    except (SQLAlchemyError, CommandError) as exc:
        raise _migration_error(exc) from None
    click.echo(f"database at revision {after} (was: {before or 'none'})")
    ctx.invoke(db_init)


@db.command("current")
@click.option(
    "--check",
    is_flag=True,
    help="Exit 3 (saying so on stderr) when the database is not at the newest revision "
    "this package ships, i.e. `db upgrade` has work to do; 0 when it is.",
)
def db_current(check: bool) -> None:
    """Print the database's schema revision, or "none" before the first `db upgrade`."""
    from sqlalchemy.exc import SQLAlchemyError

    from roast_jobs.db import migrate

    url = database_url(get_settings())
    try:
        revision = migrate.current(url)
    except SQLAlchemyError as exc:
        raise _migration_error(exc) from None
    click.echo(revision or "none")
    if check and revision != (head := migrate.head()):
        click.echo(
            f"migrations pending: the database is at {revision or 'none'}, this package's "
            f"newest revision is {head}; run `roast-jobs db upgrade`",
            err=True,
        )
        sys.exit(3)


def _masked(url: str) -> str:
    return mask_secrets(url)


cli_jobs.register(cli)
cli_domain.register(cli)


def main() -> None:
    try:
        cli(prog_name="roast-jobs")
    except Exception:
        # click shows its own errors; any other prints a traceback, which may quote a URL.
        sys.stderr.write(mask_secrets(traceback.format_exc()))
        sys.exit(1)


if __name__ == "__main__":
    main()
