"""``roast-jobs migrate legacy-to-celery|celery-to-legacy``: move waiting jobs between the
backends (see ``roast_jobs.migrator``). Progress goes to stderr (a bar on a terminal,
a line per second otherwise); the summary to stdout, as JSON with ``--json``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click

from roast_jobs.cli_jobs import _echo_json, _json_option
from roast_jobs.cli_service import database_url, one_line_errors


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--dry-run", is_flag=True, help="Change nothing; report what would move."),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1, max=50_000),
                default=1000,
                show_default=True,
                help="Jobs per transaction.",
            ),
            click.option(
                "--limit",
                type=click.IntRange(min=0),
                default=None,
                help="Look at no more than this many jobs [default: all].",
            ),
            click.option(
                "--pause",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="Seconds to wait between batches (gentler on a busy database).",
            ),
            _json_option,
        ]
    ):
        fn = option(fn)
    return fn


class _Reporter:
    """Progress on stderr: a bar on a terminal, else a plain line at most once a second."""

    def __init__(self, total: int, label: str) -> None:
        self.total = total
        self.label = label
        self.tty = sys.stderr.isatty()
        self.shown = 0
        self.last_line = 0.0
        self.bar: Any = None
        if self.tty and total:
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, summary: Any, seen: int) -> None:
        if self.bar is not None:
            self.bar.update(max(0, min(seen, self.total) - self.shown))
            self.shown = min(seen, self.total)
            return
        now = time.monotonic()
        if now - self.last_line >= 1.0:
            self.last_line = now
            skipped = sum(summary.skipped.values())
            click.echo(
                f"{self.label}: {summary.moved} moved, {skipped} not moved, "
                f"{summary.batches} batches",
                err=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _run(direction_name: str, **kw: Any) -> None:
    from roast_jobs.migrator import Direction, migrate
    from roast_jobs.migrator.run import waiting

    direction = Direction(direction_name)
    url = database_url()
    as_json = kw.pop("as_json")
    with one_line_errors():
        total = waiting(url, direction.source)
        if kw["limit"] is not None:
            total = min(total, kw["limit"])
        reporter = _Reporter(0 if kw["dry_run"] else total, direction_name)
        try:
            summary = migrate(direction, url, progress=reporter, **kw)
        finally:
            reporter.close()
    if as_json:
        _echo_json(summary.as_dict())
        return
    verb = "would move" if summary.dry_run else "moved"
    target = "Celery" if direction is Direction.LEGACY_TO_CELERY else "the legacy table"
    click.echo(f"{direction_name}{' (dry run: nothing changed)' if summary.dry_run else ''}")
    click.echo(f"  {verb}: {summary.moved} jobs to {target}")
    for reason, count in sorted(summary.skipped.items()):
        click.echo(f"  not moved: {count} ({reason})")
    if summary.left_running is not None:
        click.echo(
            f"  still on Celery: {summary.left_running} (running, held by a worker, "
            "or beyond --limit)"
        )
    click.echo(
        f"  batches: {summary.batches}, time: {summary.seconds:.2f} s, "
        f"rate: {summary.rate:,.0f} jobs/s"
    )
    click.echo(
        f"  waiting on {direction.source}: {summary.waiting_before} before, "
        f"{summary.waiting_after} after"
    )
    if summary.run_id:
        click.echo(f"  run id: {summary.run_id} (JobMigrationStatus.runId)")


@click.group()
def migrate() -> None:
    """Move waiting jobs between the legacy table and Celery.

    \b
    roast-jobs migrate legacy-to-celery --dry-run
    roast-jobs migrate legacy-to-celery --batch-size 1000
    roast-jobs migrate celery-to-legacy        (the rollback)

    Each batch is one transaction: a job is moved with its record, or not at all. Safe
    while workers of both kinds run and beside another migrator; run it again after a
    kill and it moves what is left.
    """


@migrate.command("legacy-to-celery")
@_options
@click.option(
    "--parallel",
    type=click.IntRange(min=1, max=8),
    default=1,
    show_default=True,
    help="Batches in flight at once, each its own transaction and connection.",
)
def legacy_to_celery(**kw: Any) -> None:
    """Send every waiting legacy job to Celery, oldest first. A job that cannot run (its
    document or agent has no version, an invalid id) is marked FAILED with the reason."""
    _run("legacy-to-celery", **kw)


@migrate.command("celery-to-legacy")
@_options
def celery_to_legacy(**kw: Any) -> None:
    """Bring waiting and delayed Celery jobs back to the legacy table: their messages
    are deleted and their rows switched. Jobs a worker holds finish on Celery."""
    _run("celery-to-legacy", **kw)
