"""Alembic environment: run only through ``roast_jobs.db.migrate``, which passes an open
connection (already in a transaction, holding the migration lock) in
``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from roast_jobs.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "run migrations with roast_jobs.db.migrate.upgrade() or `roast-jobs db upgrade`"
    )

# target_metadata is only read by autogenerate (new revisions, the schema-drift test).
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():  # a no-op here: the caller owns the transaction
    context.run_migrations()
