"""``"WorkerHeartbeat"``: one row per live worker process, so health can tell "no worker".

The legacy worker upserts its row every ``legacy_heartbeat_seconds`` and deletes it on a
clean stop; a row whose ``"beatAt"`` stops moving is a worker that died or hangs, and the
next beat of any worker removes it once it is long stale. Times are UTC without a zone,
as on ``"Job"``. A few rows at most: no index beyond the primary key.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS "WorkerHeartbeat" (
            id text PRIMARY KEY,
            kind text NOT NULL,
            hostname text NOT NULL,
            pid integer NOT NULL,
            "startedAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            "beatAt" timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
            slots integer NOT NULL,
            running integer NOT NULL,
            version text NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute('DROP TABLE IF EXISTS "WorkerHeartbeat"')
