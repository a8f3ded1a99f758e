"""RoastMyPost's evaluation quota on ``"User"``: the plan and its counters.

``"Plan"`` (REGULAR, PRO), ``"User".plan``, ``"evalsThisHour"``, ``"evalsThisMonth"``,
``"hourResetAt"`` and ``"monthResetAt"``: RoastMyPost's Prisma schema has them all (its
rate-limit migration); a database made by roast-jobs alone gets them here, existing
users on REGULAR with nothing counted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {
    "plan": """"Plan" NOT NULL DEFAULT 'REGULAR'""",
    "evalsThisHour": "integer NOT NULL DEFAULT 0",
    "evalsThisMonth": "integer NOT NULL DEFAULT 0",
    "hourResetAt": "timestamp(3)",
    "monthResetAt": "timestamp(3)",
}


def upgrade() -> None:
    op.execute(
        """
        DO $$ BEGIN
            CREATE TYPE "Plan" AS ENUM ('REGULAR', 'PRO');
        EXCEPTION WHEN duplicate_object THEN NULL;
        END $$
        """
    )
    found = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("User")}
    for name, kind in COLUMNS.items():
        if name not in found:
            op.execute(f'ALTER TABLE "User" ADD COLUMN "{name}" {kind}')


def downgrade() -> None:
    pass  # RoastMyPost's own schema has them: they stay, as "User".role does
