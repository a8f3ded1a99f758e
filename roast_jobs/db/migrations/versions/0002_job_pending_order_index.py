"""The waiting-job index covers the whole claim order: (backend, createdAt, id).

The legacy poller and the migrator both take waiting jobs in ``ORDER BY "createdAt", id``
order; the migrator walks them with a (createdAt, id) cursor. With ``id`` in the index
the order and the cursor come from the index alone, whatever the planner's statistics
say (after a bulk move they are stale, and a two-column index made it sort every
waiting row of the backend for each batch).

Creating the index takes a lock that blocks writes to "Job" for as long as the build
takes (about a second per million waiting rows here): run it off-peak on a large table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _index(columns: str) -> None:
    op.execute('DROP INDEX IF EXISTS "Job_backend_pending_idx"')
    op.execute(
        f'CREATE INDEX "Job_backend_pending_idx" ON "Job" ({columns}) WHERE status = \'PENDING\''
    )


def upgrade() -> None:
    _index('backend, "createdAt", id')


def downgrade() -> None:
    _index('backend, "createdAt"')
