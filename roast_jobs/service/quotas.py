"""RoastMyPost's evaluation quota (its ``validateLlmAccess`` and ``chargeQuota``).

Each user has a plan (``"User".plan``: REGULAR or PRO) that allows so many evaluations an
hour and a month (``Settings.quota_*``: 20 and 300 on REGULAR, 100 and 1,000 on PRO). The
counters are RoastMyPost's own columns: ``"evalsThisHour"`` and ``"evalsThisMonth"``, each
starting again once its ``"hourResetAt"`` / ``"monthResetAt"`` has passed (an hour and 30
days from the first evaluation of the window).

RoastMyPost checked the quota, created the jobs and charged afterwards, so requests at
once could all pass the check. Here ``charge`` locks the user's row, checks and counts in
the transaction that creates the jobs: requests of one user take turns, and one over the
limit raises ``QuotaExceeded``, which rolls its jobs back. Call it after the jobs are
created, when the request's other locks are held (the user's row is always the last lock
taken: no lock-order cycle). ``FOR NO KEY UPDATE`` does not block the key-share locks of
inserts that reference the user (documents, batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.db.models import Plan
from roast_jobs.domain.evaluations import NotFound

from .outcomes import InvalidRequest, ServiceError

WINDOWS = {"hour": timedelta(hours=1), "month": timedelta(days=30)}


@dataclass(frozen=True)
class Usage:
    """What is counted now (committed), per window, with the plan's limits; a reset time
    of None: the window has not started (nothing counted in it)."""

    plan: Plan
    hour: int
    month: int
    hour_limit: int
    month_limit: int
    hour_resets_at: datetime | None
    month_resets_at: datetime | None

    def window(self, name: str) -> tuple[int, int, datetime | None]:
        """(used, limit, resets at) of ``name``: "hour" or "month"."""
        if name == "hour":
            return self.hour, self.hour_limit, self.hour_resets_at
        return self.month, self.month_limit, self.month_resets_at

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"plan": self.plan.value}
        for name in WINDOWS:
            used, limit, resets = self.window(name)
            out[name] = {"used": used, "limit": limit, "resetsAt": resets}
        return out


class QuotaExceeded(ServiceError):
    """More evaluations than the plan has left in the hour or month; nothing was created.
    ``usage`` is what was counted before this request; ``retry_after`` the seconds until
    the request would fit (the later reset when both windows are full)."""

    def __init__(self, asked: int, usage: Usage, full: list[str]) -> None:
        now = datetime.now(UTC)
        # A full window resets at its reset time (a window not started would not be full).
        resets = {w: usage.window(w)[2] or now + WINDOWS[w] for w in full}
        window = max(full, key=lambda w: resets[w])
        used, limit, _ = usage.window(window)
        super().__init__(
            f"evaluation quota exceeded: {asked} more would make {used + asked} this "
            f"{window}, over the {usage.plan.value} plan's {limit} per {window}; it resets "
            f"at {resets[window].isoformat(timespec='seconds')}"
        )
        self.asked = asked
        self.usage = usage
        self.window = window
        self.retry_after = max(1, int((resets[window] - now).total_seconds() + 0.999))

    def as_dict(self) -> dict[str, object]:
        return {"asked": self.asked, "window": self.window, **self.usage.as_dict()}


def limits(plan: Plan) -> tuple[int, int]:
    """(per hour, per month) of ``plan``."""
    s = get_settings()
    if plan is Plan.PRO:
        return s.quota_pro_hour, s.quota_pro_month
    return s.quota_regular_hour, s.quota_regular_month


# Times are UTC, as Prisma keeps them; a window whose reset time has passed (or was never
# set) counts nothing and starts again, for an hour or a month, at the next charge.
_NOW = "(now() AT TIME ZONE 'UTC')"
_LIVE_HOUR = f'coalesce("hourResetAt" > {_NOW}, false)'
_LIVE_MONTH = f'coalesce("monthResetAt" > {_NOW}, false)'

# What is counted now, locking the row: requests of one user take turns from here to
# their commit (the row is the last lock a request takes: see the module's doc).
_LOCK = text(
    f"""
    SELECT plan::text,
           CASE WHEN {_LIVE_HOUR} THEN "evalsThisHour" ELSE 0 END,
           CASE WHEN {_LIVE_MONTH} THEN "evalsThisMonth" ELSE 0 END,
           CASE WHEN {_LIVE_HOUR} THEN "hourResetAt" END,
           CASE WHEN {_LIVE_MONTH} THEN "monthResetAt" END
      FROM "User" WHERE id = :user
    """
)
_CHARGE = text(
    f"""
    UPDATE "User" SET
        "evalsThisHour" = CASE WHEN {_LIVE_HOUR} THEN "evalsThisHour" ELSE 0 END + :n,
        "hourResetAt" = CASE WHEN {_LIVE_HOUR} THEN "hourResetAt"
                             ELSE {_NOW} + interval '1 hour' END,
        "evalsThisMonth" = CASE WHEN {_LIVE_MONTH} THEN "evalsThisMonth" ELSE 0 END + :n,
        "monthResetAt" = CASE WHEN {_LIVE_MONTH} THEN "monthResetAt"
                              ELSE {_NOW} + interval '30 days' END
    WHERE id = :user
    """
)


def _plan(value: object) -> Plan:
    try:
        return Plan(value)
    except ValueError:  # a label of an older RoastMyPost "Plan" type: its fallback
        return Plan.REGULAR


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None else None


def _read(session: Session, user_id: str, lock: bool) -> Usage:
    sql = _LOCK.text + (" FOR NO KEY UPDATE" if lock else "")
    row = session.execute(text(sql), {"user": user_id}).first()
    if row is None:
        raise NotFound("user", [user_id])
    plan = _plan(row[0])
    hour_limit, month_limit = limits(plan)
    return Usage(plan, row[1], row[2], hour_limit, month_limit, _aware(row[3]), _aware(row[4]))


def enabled() -> bool:
    return get_settings().quota_enabled


def _refuse(usage: Usage, count: int) -> None:
    for name in WINDOWS:
        _used, limit, _resets = usage.window(name)
        if count > limit:  # could never fit: waiting would not help
            raise InvalidRequest(
                f"{count} evaluations in one request is more than the {usage.plan.value} "
                f"plan's {limit} per {name}"
            )
    full = [name for name in WINDOWS if usage.window(name)[0] + count > usage.window(name)[1]]
    if full:
        raise QuotaExceeded(count, usage, full)


def charge(session: Session, user_id: str, count: int) -> Usage | None:
    """Count ``count`` evaluations for ``user_id`` in ``session``'s transaction: its row
    is locked, checked and updated there, so requests at once get exactly what is left.
    ``QuotaExceeded`` (429) or ``InvalidRequest`` (more than a window's limit at once)
    when they do not fit; the caller's transaction must then roll back. Returns the usage
    before this charge; None when quotas are off or nothing is charged."""
    if count <= 0 or not enabled():
        return None
    usage = _read(session, user_id, lock=True)
    _refuse(usage, count)
    session.execute(_CHARGE, {"user": user_id, "n": count})
    return usage


def check(session: Session, user_id: str, count: int) -> None:
    """Refuse now what ``charge`` would refuse, without charging or locking (before slow
    work such as fetching a page); the charge itself still decides."""
    if count > 0 and enabled():
        _refuse(_read(session, user_id, lock=False), count)


def usage_of(session: Session, user_id: str) -> Usage:
    return _read(session, user_id, lock=False)


def set_plan(session: Session, user_id: str, plan: Plan) -> None:
    """Move ``user_id`` to ``plan``; the counters go on (the new limits apply at once)."""
    session.execute(
        text('UPDATE "User" SET plan = CAST(:p AS "Plan") WHERE id = :id'),
        {"p": plan.value, "id": user_id},
    )
