"""``roast-jobs flags show|set|rollout``: the feature flags that pick the backend (legacy
or Celery) of new jobs, and their history."""

from __future__ import annotations

import getpass
import socket
from typing import Any

import click

from roast_jobs.cli_jobs import _echo_json, _json_option
from roast_jobs.cli_service import database_url, one_line_errors


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

    url = database_url()
    with one_line_errors():
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
    with one_line_errors():
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

    url = database_url()
    with one_line_errors():
        changes = f.set_flags({name: value}, who if who is not None else _who(), url)
    _report(changes, [name], url)


@flags.command("rollout")
@click.argument("percent")
@_by_option
def flags_rollout(percent: str, who: str | None) -> None:
    """Send PERCENT (0-100) of new jobs to Celery: use_celery on (off for 0) and
    celery_rollout_percent, in one change."""
    from roast_jobs.service import flags as f

    url = database_url()
    with one_line_errors():
        changes = f.rollout(percent, who if who is not None else _who(), url)
    _report(changes, [f.USE_CELERY, f.ROLLOUT_PERCENT], url)
