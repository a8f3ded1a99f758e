"""``roast-jobs api`` (the HTTP API under uvicorn), ``roast-jobs keys create|list|revoke``
(its API keys) and ``roast-jobs users role|plan|quota`` (who is an admin, and
how many evaluations each user may ask for)."""

from __future__ import annotations

import click

from roast_jobs.cli_jobs import _echo_json, _json_option
from roast_jobs.cli_service import database_url, one_line_errors


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
def api_command(host: str, port: int) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json, health at /api/health/jobs,
    Prometheus at /metrics)."""
    import uvicorn

    from roast_jobs.api import create_app
    from roast_jobs.config import get_settings
    from roast_jobs.logs import uvicorn_log_config

    app = create_app(database_url())
    # uvicorn's access and error logs through our filters (and JSON formatter for json).
    log_config = uvicorn_log_config(get_settings().log_format)
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config)


@click.group()
def keys() -> None:
    """API keys of the HTTP API (only their hashes are stored)."""


@keys.command("create")
@click.argument("user")
@click.option("--name", default=None, help="What the key is for.")
def keys_create(user: str, name: str | None) -> None:
    """A new key for USER (an id or an email); shown once, keep it."""
    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys

    url = database_url()
    with one_line_errors(), transaction(url) as session:
        key, info = api_keys.create(session, user, name)
    click.echo(key)
    click.echo(f"key {info.id} ({info.prefix}...) for user {info.user_id}", err=True)


@keys.command("list")
@click.argument("user")
@_json_option
def keys_list(user: str, as_json: bool) -> None:
    """USER's keys: id, prefix, when made, last used and revoked."""
    from dataclasses import asdict

    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys

    with one_line_errors(), transaction(database_url()) as session:
        found = api_keys.list_keys(session, user)
    if as_json:
        _echo_json([asdict(k) for k in found])
        return
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        click.echo(f"{k.id}  {k.prefix}...  {k.name or '-'}  {state}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke KEY (its id or its shown prefix); requests with it get 401 at once."""
    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys

    with one_line_errors(), transaction(database_url()) as session:
        try:
            info = api_keys.revoke(session, key)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"key {info.id} ({info.prefix}...) revoked")


@click.group()
def users() -> None:
    """Users of the HTTP API."""


@users.command("role")
@click.argument("user")
@click.argument("role", type=click.Choice(["admin", "user"]))
def users_role(user: str, role: str) -> None:
    """Make USER (an id or an email) an admin, or a plain user again."""
    from roast_jobs.db.models import UserRole
    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys

    with one_line_errors(), transaction(database_url()) as session:
        user_id = api_keys.set_role(session, user, UserRole(role.upper()))
    click.echo(f"user {user_id} is now {role}")


@users.command("plan")
@click.argument("user")
@click.argument("plan", type=click.Choice(["regular", "pro"]))
def users_plan(user: str, plan: str) -> None:
    """Put USER (an id or an email) on a plan: how many evaluations an hour and a month
    the HTTP API lets them ask for."""
    from roast_jobs.db.models import Plan
    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys, quotas

    chosen = Plan(plan.upper())
    with one_line_errors(), transaction(database_url()) as session:
        user_id, _ = api_keys.find_user(session, user)
        quotas.set_plan(session, user_id, chosen)
    hour, month = quotas.limits(chosen)
    click.echo(
        f"user {user_id} is now on {chosen.value}: {hour} evaluations an hour, {month} a month"
    )


@users.command("quota")
@click.argument("user")
@_json_option
def users_quota(user: str, as_json: bool) -> None:
    """USER's plan and the evaluations counted this hour and month."""
    from roast_jobs.db.session import transaction
    from roast_jobs.service import api_keys, quotas

    with one_line_errors(), transaction(database_url()) as session:
        user_id, _ = api_keys.find_user(session, user)
        usage = quotas.usage_of(session, user_id)
    if as_json:
        _echo_json({"user": user_id, **usage.as_dict()})
        return
    click.echo(
        f"user {user_id} on {usage.plan.value}: {usage.hour}/{usage.hour_limit} this hour, "
        f"{usage.month}/{usage.month_limit} this month"
    )
