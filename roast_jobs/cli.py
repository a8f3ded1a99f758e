"""The ``roast-jobs`` command: demo, worker, database set-up; jobs, dead letters and
maintenance (``cli_jobs``)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click

from roast_jobs import cli_jobs
from roast_jobs.cli_jobs import check_database
from roast_jobs.config import Settings, get_settings, override_settings

DEMO_APP = "roast_jobs.tasks.demo"


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


@click.group()
@click.version_option(package_name="roast-jobs")
def cli() -> None:
    """roast-jobs: a PostgreSQL broker for Celery, and the RoastMyPost job system on it."""


@cli.command()
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
def demo(tasks: int, seed: int | None, timeout: float, quiet: bool) -> None:
    """Run a worker and a few hundred tasks with mixed priorities and delays.

    Uses DATABASE_URL when set; otherwise starts an embedded PostgreSQL in
    ROAST_JOBS_DATA_DIR (default .roast-jobs/) and stops it at the end.
    """
    from roast_jobs import embedded

    settings = get_settings()
    server: embedded.EmbeddedPostgres | None = None
    ok = False
    with terminate_as_interrupt():
        try:
            if settings.database_url:
                url = database_url(settings)
                click.echo(f"using DATABASE_URL ({_masked(url)})")
            else:
                click.echo(
                    f"DATABASE_URL is not set: starting an embedded PostgreSQL in "
                    f"{settings.data_dir}/"
                )
                server = embedded.EmbeddedPostgres(settings.data_dir)
                try:
                    url = server.start()
                except embedded.EmbeddedPostgresError as exc:
                    raise click.ClickException(str(exc)) from None
                click.echo(f"embedded PostgreSQL ({server.bindir}) at {url}")
                override_settings(database_url=url)
            from roast_jobs import demo as runner
            from roast_jobs.tasks.demo import app

            try:
                ok = runner.run(app, url, tasks, seed, timeout, quiet, click.echo)
            except runner.DemoError as exc:
                raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
        finally:
            if server is not None:
                server.stop()
                click.echo("embedded PostgreSQL stopped")
    sys.exit(0 if ok else 1)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--app", "-A", "app_name", default=DEMO_APP, show_default=True, help="The Celery app to run."
)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--pool", "-P", default="prefork", show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    app_name: str, concurrency: int, pool: str, loglevel: str, celery_args: tuple[str, ...]
) -> None:
    """Run `celery -A APP worker` on DATABASE_URL; extra arguments go to celery."""
    database_url(get_settings())
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_name,
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        *celery_args,
    ]
    click.echo(" ".join(cmd[1:]), err=True)
    sys.stdout.flush()
    os.execv(sys.executable, cmd)  # the worker gets our pid, so signals reach it directly


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


def _masked(url: str) -> str:
    from roast_jobs.broker.connections import mask_url

    return mask_url(url)


cli_jobs.register(cli)


def main() -> None:
    cli(prog_name="roast-jobs")


if __name__ == "__main__":
    main()
