"""Feature flags that pick the backend of each new job, changed live by operators.

- ``use_celery`` off: every new job goes to the legacy table.
- ``use_celery`` on: ``celery_rollout_percent`` (default 100) of the jobs go to Celery.
  The bucket of a job is a stable hash of its evaluation id (0-99): an evaluation always
  goes the same way, and raising the percentage from 10 to 50 keeps the first 10% on
  Celery and adds the next 40.

The ``FeatureFlag`` table holds the values, ``FeatureFlagChange`` who changed what and
when. Each process re-reads the table every ``flag_refresh_seconds`` (2 s), so a change
reaches every process within that, without a restart. ``ROAST_JOBS_USE_CELERY`` and
``ROAST_JOBS_CELERY_ROLLOUT_PERCENT`` override the table when set.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.db.models import Backend
from roast_jobs.db.session import transaction

log = logging.getLogger("roast_jobs.flags")

USE_CELERY = "use_celery"
ROLLOUT_PERCENT = "celery_rollout_percent"
KNOWN = (USE_CELERY, ROLLOUT_PERCENT)


class FlagError(ValueError):
    pass


def bucket(key: str) -> int:
    """0-99, the same for ``key`` in every process and Python version."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def parse_value(name: str, value: Any) -> Any:
    """The flag's value from a CLI string or JSON value; ``FlagError`` when invalid."""
    if name == USE_CELERY:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in ("1", "true", "on", "yes"):
            return True
        if word in ("0", "false", "off", "no"):
            return False
        raise FlagError(f"{USE_CELERY} takes on/off (true/false), not {value!r}")
    if name == ROLLOUT_PERCENT:
        try:
            number = int(str(value).strip().rstrip("%"))
        except ValueError:
            raise FlagError(f"{ROLLOUT_PERCENT} takes 0-100, not {value!r}") from None
        if not 0 <= number <= 100:
            raise FlagError(f"{ROLLOUT_PERCENT} takes 0-100, not {number}")
        return number
    raise FlagError(f"unknown flag {name!r}; known: {', '.join(KNOWN)}")


@dataclass(frozen=True)
class Flags:
    use_celery: bool = False
    rollout_percent: int = 100
    overridden: tuple[str, ...] = ()  # flags set by the environment

    @property
    def mode(self) -> str:
        if not self.use_celery or self.rollout_percent == 0:
            return "off"
        return "on" if self.rollout_percent == 100 else f"canary {self.rollout_percent}%"

    def backend_for(self, key: str) -> Backend:
        if self.use_celery and bucket(key) < self.rollout_percent:
            return Backend.CELERY
        return Backend.LEGACY

    def as_dict(self) -> dict[str, Any]:
        return {
            USE_CELERY: self.use_celery,
            ROLLOUT_PERCENT: self.rollout_percent,
            "mode": self.mode,
            "overridden_by_environment": list(self.overridden),
        }


_READ = 'SELECT name, value FROM "FeatureFlag" WHERE name = ANY(:names)'


def read_table(url: str | None = None, session: Session | None = None) -> dict[str, Any]:
    """The table's flags; with ``session``, read in its transaction (no other connection)."""
    if session is None:
        with transaction(url) as own:
            return read_table(url, own)
    rows = session.execute(text(_READ), {"names": list(KNOWN)})
    return {name: value for name, value in rows}


def _stored(values: dict[str, Any], name: str, default: Any) -> Any:
    """A flag's value from the table; a row edited by hand into nonsense counts as unset
    (Celery off is the safe side) rather than failing every job creation."""
    if name not in values:
        return default
    try:
        return parse_value(name, values[name])
    except FlagError as exc:
        log.warning("ignoring FeatureFlag %s: %s", name, exc)
        return default


def from_values(values: dict[str, Any]) -> Flags:
    settings = get_settings()
    overridden = []
    use_celery = _stored(values, USE_CELERY, False)
    percent = _stored(values, ROLLOUT_PERCENT, 100)
    if settings.use_celery is not None:
        use_celery = settings.use_celery
        overridden.append(USE_CELERY)
    if settings.celery_rollout_percent is not None:
        percent = settings.celery_rollout_percent
        overridden.append(ROLLOUT_PERCENT)
    return Flags(use_celery, percent, tuple(overridden))


class FlagCache:
    """This process's view of the flags, re-read at most every ``refresh`` seconds."""

    def __init__(self, url: str | None = None, refresh: float | None = None) -> None:
        self.url = url
        self.refresh = refresh if refresh is not None else get_settings().flag_refresh_seconds
        self._lock = threading.Lock()
        self._flags: Flags | None = None
        self._read_at = 0.0

    def current(self, session: Session | None = None) -> Flags:
        """The flags, re-read when older than ``refresh`` (with ``session`` when given:
        a caller inside a transaction must not check out a second connection)."""
        now = time.monotonic()
        flags = self._flags
        if flags is not None and now - self._read_at < self.refresh:
            return flags
        # While another thread re-reads, the flags of a moment ago serve: a caller holding
        # a pooled connection must not wait behind one that is waiting for a connection.
        if not self._lock.acquire(blocking=flags is None):
            assert flags is not None
            return flags
        try:
            if self._flags is None or time.monotonic() - self._read_at >= self.refresh:
                self._flags = from_values(read_table(self.url, session))
                self._read_at = time.monotonic()
            return self._flags
        finally:
            self._lock.release()

    def invalidate(self) -> None:
        self._read_at = 0.0


_SET = """
INSERT INTO "FeatureFlag" (name, value, "updatedAt", "updatedBy")
VALUES (:name, CAST(:value AS jsonb), CURRENT_TIMESTAMP, :who)
ON CONFLICT (name) DO UPDATE
   SET value = EXCLUDED.value, "updatedAt" = EXCLUDED."updatedAt",
       "updatedBy" = EXCLUDED."updatedBy"
"""
_LOG = """
INSERT INTO "FeatureFlagChange" ("flagName", "oldValue", "newValue", "changedBy", "changedAt")
VALUES (:name, CAST(:old AS jsonb), CAST(:new AS jsonb), :who, CURRENT_TIMESTAMP)
"""


@dataclass(frozen=True)
class FlagChange:
    name: str
    old: Any
    new: Any
    changed_by: str


def set_flags(values: dict[str, Any], changed_by: str, url: str | None = None) -> list[FlagChange]:
    """Set flags in one transaction and record each change (unchanged values are not
    recorded). Concurrent setters are serialized by the flag rows' locks."""
    import json

    parsed = {name: parse_value(name, value) for name, value in values.items()}
    if not changed_by:
        raise FlagError("say who changes the flags (changed_by)")
    changes: list[FlagChange] = []
    with transaction(url) as session:
        # Lock existing rows (and serialize first inserts) so old values are exact.
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('roast_jobs.flags'))"))
        old = {name: value for name, value in session.execute(text(_READ), {"names": list(parsed)})}
        for name, value in parsed.items():
            if name in old and old[name] == value:
                continue
            params = {"name": name, "value": json.dumps(value), "who": changed_by}
            session.execute(text(_SET), params)
            session.execute(
                text(_LOG),
                {
                    "name": name,
                    "old": json.dumps(old[name]) if name in old else None,
                    "new": json.dumps(value),
                    "who": changed_by,
                },
            )
            changes.append(FlagChange(name, old.get(name), value, changed_by))
    return changes


def rollout(percent: int, changed_by: str, url: str | None = None) -> list[FlagChange]:
    """``use_celery`` on with ``percent`` of jobs to Celery; 0 turns Celery off."""
    percent = parse_value(ROLLOUT_PERCENT, percent)
    return set_flags({USE_CELERY: percent > 0, ROLLOUT_PERCENT: percent}, changed_by, url)


def history(url: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    with transaction(url) as session:
        rows = session.execute(
            text(
                'SELECT "flagName", "oldValue", "newValue", "changedBy", "changedAt" '
                'FROM "FeatureFlagChange" ORDER BY "changedAt" DESC, id DESC LIMIT :limit'
            ),
            {"limit": limit},
        ).mappings()
        return [dict(row) for row in rows]
