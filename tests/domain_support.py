"""Helpers for the domain tests: a database of their own, with the app's schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from tests.conftest import DATABASE_URL, RUN_ID


def _admin_url() -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path="/postgres"))


def database_url_for(name: str) -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{name}"))


def drop_database(name: str) -> None:
    with psycopg.connect(_admin_url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_database(upgrade: bool = True) -> Iterator[str]:
    """A new, empty database (migrated unless ``upgrade`` is False), dropped afterwards."""
    from roast_jobs.broker.connections import close_pools
    from roast_jobs.db.session import dispose_engines

    name = f"rjd_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_admin_url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(name)
    try:
        if upgrade:
            from roast_jobs.db.migrate import upgrade as run_upgrade

            run_upgrade(url)
        yield url
    finally:
        dispose_engines()
        close_pools()
        drop_database(name)


def rollout(service: Any, percent: int) -> None:
    """Set the rollout (0 = all legacy) and make ``service`` see it at once."""
    from roast_jobs.service import flags

    flags.rollout(percent, "tests", service.url)
    service.flags.invalidate()


def fetch(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def user_with_agent(url: str) -> dict[str, str]:
    """A user and an agent of theirs: ``{"user", "agent"}``."""
    from roast_jobs.db.session import transaction
    from roast_jobs.domain import sample_data

    with transaction(url) as s:
        user = sample_data.create_user(s)
        agent = sample_data.create_agent(s, user)
    return {"user": user, "agent": agent}


def lock_waiters(conn: Any, table: str) -> int:
    """How many sessions wait for a lock on ``table`` (seen from ``conn``, a psycopg
    connection, for instance the one holding it)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE relation = to_regclass(%s) AND NOT granted",
        (f'"{table}"',),
    ).fetchone()
    return int(row[0])
