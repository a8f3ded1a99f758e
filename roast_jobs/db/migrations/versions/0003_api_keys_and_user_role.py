"""API keys for the HTTP API, and the user role that admin routes check.

- ``"UserRole"`` (USER, ADMIN) and ``"User".role``: RoastMyPost's Prisma schema has both;
  a database made by roast-jobs alone gets them here (existing users become USER).
- ``"ApiKey"``: one row per key, the key itself never stored: its SHA-256 (keys are 32
  random bytes, so a fast hash is enough), and a short prefix to tell keys apart. A
  database that already has an ``"ApiKey"`` table of another shape stops the upgrade
  with a message rather than have the API read the wrong columns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

API_KEY_COLUMNS = {"id", "userId", "name", "prefix", "keyHash", "createdAt", "lastUsedAt",
                   "revokedAt"}  # fmt: skip


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    op.execute(
        """
        DO $$ BEGIN
            CREATE TYPE "UserRole" AS ENUM ('USER', 'ADMIN');
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
        """
    )
    if "role" not in {c["name"] for c in inspector.get_columns("User")}:
        op.execute("""ALTER TABLE "User" ADD COLUMN role "UserRole" NOT NULL DEFAULT 'USER'""")
    if "ApiKey" in inspector.get_table_names():
        found = {c["name"] for c in inspector.get_columns("ApiKey")}
        if not found >= API_KEY_COLUMNS:
            raise CommandError(
                'an "ApiKey" table of another shape exists (missing: '
                f"{', '.join(sorted(API_KEY_COLUMNS - found))}); rename it, then upgrade"
            )
        return
    op.execute(
        """
        CREATE TABLE "ApiKey" (
            id text PRIMARY KEY,
            "userId" text NOT NULL REFERENCES "User"(id) ON DELETE CASCADE ON UPDATE CASCADE,
            name text,
            prefix text NOT NULL,
            "keyHash" text NOT NULL,
            "createdAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "lastUsedAt" timestamp(3),
            "revokedAt" timestamp(3),
            CONSTRAINT "ApiKey_keyHash_key" UNIQUE ("keyHash")
        )
        """
    )
    op.execute('CREATE INDEX "ApiKey_userId_idx" ON "ApiKey" ("userId")')


def downgrade() -> None:
    op.execute('DROP TABLE IF EXISTS "ApiKey"')
    # "User".role stays: RoastMyPost's own schema has it.
