"""The legacy worker's heartbeat: its ``"WorkerHeartbeat"`` row, and how health reads it.

The worker upserts its row at start and then at most every ``legacy_heartbeat_seconds``
from its poll loop, and deletes it on a clean stop. A beat never raises and never waits
long (short lock and statement timeouts): a database that is away, a locked table or a
schema without migration 0004 costs a skipped beat, logged at once and then every few
minutes while it lasts, and the poll goes on. Each beat also deletes the rows of workers
that stopped beating long ago (killed, host lost), so the table holds a few rows.

Health and metrics count a worker live while its last beat is younger than
``legacy_heartbeat_stale_seconds``. Every time is the database's clock in UTC (as on
``"Job"``), so the hosts' clocks do not matter.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from roast_jobs import __version__

log = logging.getLogger("roast_jobs.legacy")

KIND = "legacy"
#: While the beats fail: one warning at once, then one per this many seconds.
WARN_EVERY_SECONDS = 300.0

_NOW = "(now() AT TIME ZONE 'UTC')"
# A beat must not hold up the poll (kills, claims) behind a lock or a slow server.
_TIMEOUTS = ("SET LOCAL lock_timeout = '2s'", "SET LOCAL statement_timeout = '5s'")
# startedAt survives a re-insert (our row pruned while this process was stopped).
_UPSERT = f"""
INSERT INTO "WorkerHeartbeat"
       (id, kind, hostname, pid, "startedAt", "beatAt", slots, running, version)
VALUES (:id, :kind, :hostname, :pid, COALESCE(CAST(:started AS timestamp), {_NOW}), {_NOW},
        :slots, :running, :version)
ON CONFLICT (id) DO UPDATE
   SET "beatAt" = EXCLUDED."beatAt", slots = EXCLUDED.slots, running = EXCLUDED.running
RETURNING "startedAt"
"""
# Another worker pruning at the same time takes the other rows: nobody waits.
_PRUNE = f"""
DELETE FROM "WorkerHeartbeat" WHERE id IN (
    SELECT id FROM "WorkerHeartbeat"
     WHERE "beatAt" < {_NOW} - make_interval(secs => :older) AND id <> :id
       FOR UPDATE SKIP LOCKED)
"""
_DELETE = """DELETE FROM "WorkerHeartbeat" WHERE id = :id"""
_TABLE = """SELECT to_regclass('"WorkerHeartbeat"') IS NOT NULL"""
_LIVE = f"""
SELECT count(*) FILTER (WHERE age <= :fresh),
       COALESCE(sum(running) FILTER (WHERE age <= :fresh), 0),
       COALESCE(sum(slots) FILTER (WHERE age <= :fresh), 0),
       min(age)
FROM (SELECT running, slots,
             greatest(extract(epoch FROM {_NOW} - "beatAt")::float8, 0) AS age
        FROM "WorkerHeartbeat" WHERE kind = :kind) AS beats
"""


class Heartbeat:
    """One worker process's row. ``beat`` from the poll loop, ``remove`` on a clean stop."""

    def __init__(
        self, engine: Engine, slots: int, interval: float, prune_after: float, kind: str = KIND
    ) -> None:
        self.engine = engine
        self.slots = slots
        self.interval = interval
        self.prune_after = prune_after
        self.kind = kind
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.id = f"{self.hostname}:{self.pid}:{secrets.token_hex(4)}"
        self._started_at: datetime | None = None
        self._next_beat = 0.0  # the first call beats
        self._failing_since: float | None = None
        self._next_warning = 0.0

    def beat(self, running: int) -> bool:
        """Write the row if a beat is due; False when none was due or the write failed."""
        now = time.monotonic()
        if now < self._next_beat:
            return False
        # A failed beat waits its turn too: a database that is away is not asked every poll.
        self._next_beat = now + self.interval
        values = {
            "id": self.id,
            "kind": self.kind,
            "hostname": self.hostname,
            "pid": self.pid,
            "started": self._started_at,
            "slots": self.slots,
            "running": running,
            "version": __version__,
        }
        try:
            with self.engine.begin() as conn:
                for statement in _TIMEOUTS:
                    conn.execute(text(statement))
                self._started_at = conn.execute(text(_UPSERT), values).scalar_one()
                conn.execute(text(_PRUNE), {"older": self.prune_after, "id": self.id})
        except Exception as exc:
            self._failed(exc)
            return False
        if self._failing_since is not None:
            away = time.monotonic() - self._failing_since
            log.info("heartbeat written again (after %.1f s of errors)", away)
            self._failing_since = None
            self._next_warning = 0.0
        return True

    def remove(self) -> None:
        """Delete the row (a clean stop); if that fails, the row goes stale and is pruned."""
        try:
            with self.engine.begin() as conn:
                for statement in _TIMEOUTS:
                    conn.execute(text(statement))
                conn.execute(text(_DELETE), {"id": self.id})
        except Exception as exc:
            log.warning("heartbeat %s not removed (it will go stale): %s", self.id, _line(exc))

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now >= self._next_warning:
            self._next_warning = now + WARN_EVERY_SECONDS
            log.warning("heartbeat not written (next try in %g s): %s", self.interval, _line(exc))


@dataclass(frozen=True)
class LiveWorkers:
    """The workers of one kind whose last beat is fresh, and what they hold."""

    live: int
    running: int  # children now, summed over the live workers
    slots: int
    newest_age_seconds: float | None  # of the newest beat, fresh or not; None: no row


def live_workers(session: Session, fresh_seconds: float, kind: str = KIND) -> LiveWorkers:
    """Read the heartbeats; none on a database without the table (before migration 0004)."""
    if not session.execute(text(_TABLE)).scalar():
        return LiveWorkers(0, 0, 0, None)
    row = session.execute(text(_LIVE), {"fresh": fresh_seconds, "kind": kind}).one()
    return LiveWorkers(int(row[0]), int(row[1]), int(row[2]), row[3])


def _line(exc: BaseException) -> str:
    exc = getattr(exc, "orig", None) or exc  # SQLAlchemy's wrapper adds the statement
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]
