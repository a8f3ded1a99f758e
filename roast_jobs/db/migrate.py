"""Schema migrations (Alembic), run by ``roast-jobs db upgrade``.

The migrations ship inside the package (``roast_jobs/db/migrations``) and run
programmatically: no ``alembic.ini``. An upgrade runs in one transaction that first takes
a PostgreSQL advisory lock, so processes upgrading at once (several deploys, workers that
upgrade on start) run one after the other, and the later ones find the database at head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from roast_jobs.jobs.results import sqlalchemy_url

MIGRATIONS = Path(__file__).with_name("migrations")
#: How long a migration statement waits for a table lock before the upgrade gives up.
LOCK_TIMEOUT_MS = 10_000

# pg_advisory_xact_lock key: "rjmigrat" as a bigint; locks are per database.
LOCK_KEY = int.from_bytes(b"rjmigrat", "big") - 2**63


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    # configparser interpolation: a literal % in the path must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _engine(url: str) -> Engine:
    # One connection for one command; the app's pooled engines (session.py) stay untouched.
    return create_engine(sqlalchemy_url(url), poolclass=NullPool)


def head() -> str:
    """The newest revision the package ships."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "no migrations found"
    return revision


def current(url: str) -> str | None:
    """The database's revision, or None when it was never upgraded (no alembic_version)."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (idempotent: at that revision already, a no-op)."""
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            # Held to the commit: a concurrent upgrade waits here, then reads the new
            # alembic_version and has nothing left to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            # On a live database: give up (and roll back) rather than queue for a table
            # lock behind a long transaction while every write of the app queues behind us.
            conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'"))
            command.upgrade(alembic_config(conn), revision)
    finally:
        engine.dispose()
