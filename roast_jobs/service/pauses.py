"""The ``SystemPause`` kill switch: read, open and end it.

While a row has no ``endedAt``, ``JobService`` creates no job (``SystemPaused``). Opening
takes a transaction-level advisory lock before it looks for an open row, so two admins
pausing at once leave one open row: the second waits for the first to commit, then sees
its row and is refused. Creates hold the same lock shared from their pause check to their
commit, so when opening returns no create that passed its check is still to commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text

from roast_jobs.db.models import new_uuid
from roast_jobs.db.session import transaction
from roast_jobs.domain.evaluations import PAUSE_LOCK

#: Opening a pause is serialized on this lock (per database, held until commit), and waits
#: for the creates in flight, which hold it shared (``guard_against_pause``).
_LOCK = text(f"SELECT pg_advisory_xact_lock({PAUSE_LOCK})")
_OPEN = text(
    'SELECT id, reason, "startedAt" FROM "SystemPause" WHERE "endedAt" IS NULL '
    'ORDER BY "startedAt" DESC, id DESC LIMIT 1'
)
_INSERT = text(
    'INSERT INTO "SystemPause" (id, reason, "startedAt") '
    "VALUES (:id, :reason, CURRENT_TIMESTAMP) "
    'RETURNING id, reason, "startedAt"'
)
# Ends every open row: a database may hold several from before the lock existed, and any
# open one keeps job creation refused.
_END = text(
    'UPDATE "SystemPause" SET "endedAt" = CURRENT_TIMESTAMP WHERE "endedAt" IS NULL '
    'RETURNING id, "startedAt"'
)

MAX_REASON = 1000


@dataclass(frozen=True)
class Pause:
    id: str
    reason: str
    started_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "paused": True,
            "reason": self.reason,
            "startedAt": self.started_at,
            "id": self.id,
        }


class AlreadyPaused(Exception):
    def __init__(self, pause: Pause) -> None:
        super().__init__(
            f"job creation is already paused since {pause.started_at.isoformat()} UTC "
            f"(pause {pause.id}): {pause.reason}"
        )
        self.pause = pause


class NotPaused(LookupError):
    def __init__(self) -> None:
        super().__init__("job creation is not paused")


NOT_PAUSED: dict[str, Any] = {"paused": False, "reason": None, "startedAt": None, "id": None}


def current(url: str) -> Pause | None:
    """The open pause (the latest, if several are open), or None."""
    with transaction(url) as s:
        row = s.execute(_OPEN).first()
    return Pause(*row) if row else None


def open_pause(url: str, reason: str) -> Pause:
    """Pause job creation; ``AlreadyPaused`` (nothing written) if a pause is open."""
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise ValueError(f"a pause needs a reason of 1-{MAX_REASON} characters")
    with transaction(url) as s:
        s.execute(_LOCK)
        row = s.execute(_OPEN).first()
        if row is not None:
            raise AlreadyPaused(Pause(*row))
        return Pause(*s.execute(_INSERT, {"id": new_uuid(), "reason": reason}).one())


def end_pause(url: str) -> str:
    """End the open pause; returns its id (the latest's, if several were open).
    ``NotPaused`` if none is open."""
    with transaction(url) as s:
        rows = s.execute(_END).all()
    if not rows:
        raise NotPaused()
    return str(max(rows, key=lambda r: (r[1], r[0]))[0])
