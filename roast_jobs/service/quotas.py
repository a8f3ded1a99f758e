"""RoastMyPost's evaluation quota (its ``validateLlmAccess`` and ``chargeQuota``).

Each user has a plan (``"User".plan``: REGULAR or PRO) that allows so many evaluations an
hour and a month (``Settings.quota_*``: 20 and 300 on REGULAR, 100 and 1,000 on PRO). The
counters are RoastMyPost's own columns: ``"evalsThisHour"`` and ``"evalsThisMonth"``, each
starting again once its ``"hourResetAt"`` / ``"monthResetAt"`` has passed (an hour and a
month from the first evaluation of the window).

RoastMyPost checked the quota, created the jobs and charged afterwards, so requests at
once could all pass the check. Here ``charge`` counts and checks in one UPDATE of the
user's row, in the transaction that creates the jobs: the row lock makes requests of one
user take turns, and a request over the limit raises ``QuotaExceeded``, which rolls its
jobs back with the charge. Call it after the jobs are created, when the request's other
locks are held (the user's row is always the last lock taken: no lock-order cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from roast_jobs.config import get_settings
from roast_jobs.db.models import Plan
from roast_jobs.domain.evaluations import NotFound

from .outcomes import ServiceError


@dataclass(frozen=True)
class Usage:
    plan: Plan
    hour: int
    month: int
    hour_limit: int
    month_limit: int
    hour_resets_at: datetime | None
    month_resets_at: datetime | None

    def as_dict(self) -> dict[str, object]:
        return {
            "plan": self.plan.value,
            "hour": {"used": self.hour, "limit": self.hour_limit, "resetsAt": self.hour_resets_at},
            "month": {
                "used": self.month,
                "limit": self.month_limit,
                "resetsAt": self.month_resets_at,
            },
        }


class QuotaExceeded(ServiceError):
    """More evaluations than the plan allows in the hour or month; nothing was created."""

    def __init__(self, window: str, asked: int, usage: Usage) -> None:
        hour = window == "hour"
        limit = usage.hour_limit if hour else usage.month_limit
        used = (usage.hour if hour else usage.month) - asked
        resets = usage.hour_resets_at if hour else usage.month_resets_at
        super().__init__(
            f"evaluation quota exceeded: {asked} more would make {used + asked} this {window}, "
            f"over the {usage.plan.value} plan's {limit} per {window}"
            + (f"; it resets at {resets.isoformat()}Z" if resets else "")
        )
        self.window = window
        self.usage = usage
        self.resets_at = resets

    def retry_after(self) -> int:
        """Seconds until the window starts again (at least 1)."""
        if self.resets_at is None:
            return 1
        left = (self.resets_at.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        return max(1, int(left + 0.999))


def limits(plan: Plan) -> tuple[int, int]:
    """(per hour, per month) of ``plan``."""
    s = get_settings()
    if plan is Plan.PRO:
        return s.quota_pro_hour, s.quota_pro_month
    return s.quota_regular_hour, s.quota_regular_month


# A window whose reset time has passed (or was never set) starts again at zero, for an
# hour or a month from now. Times are UTC, as Prisma keeps them.
_NOW = "(now() AT TIME ZONE 'UTC')"
_CHARGE = text(
    f"""
    UPDATE "User" SET
        "evalsThisHour" = CASE WHEN coalesce("hourResetAt" > {_NOW}, false)
                               THEN "evalsThisHour" ELSE 0 END + :n,
        "hourResetAt" = CASE WHEN coalesce("hourResetAt" > {_NOW}, false)
                             THEN "hourResetAt" ELSE {_NOW} + interval '1 hour' END,
        "evalsThisMonth" = CASE WHEN coalesce("monthResetAt" > {_NOW}, false)
                                THEN "evalsThisMonth" ELSE 0 END + :n,
        "monthResetAt" = CASE WHEN coalesce("monthResetAt" > {_NOW}, false)
                              THEN "monthResetAt" ELSE {_NOW} + interval '1 month' END
    WHERE id = :user
    RETURNING plan, "evalsThisHour", "evalsThisMonth", "hourResetAt", "monthResetAt"
    """
)

_READ = text(
    f"""
    SELECT plan,
           CASE WHEN coalesce("hourResetAt" > {_NOW}, false) THEN "evalsThisHour" ELSE 0 END,
           CASE WHEN coalesce("monthResetAt" > {_NOW}, false) THEN "evalsThisMonth" ELSE 0 END,
           CASE WHEN "hourResetAt" > {_NOW} THEN "hourResetAt" END,
           CASE WHEN "monthResetAt" > {_NOW} THEN "monthResetAt" END
      FROM "User" WHERE id = :user
    """
)


def _usage(row: object) -> Usage:
    plan_value, hour, month, hour_reset, month_reset = row  # type: ignore[misc]
    plan = Plan(plan_value)
    hour_limit, month_limit = limits(plan)
    return Usage(plan, hour, month, hour_limit, month_limit, hour_reset, month_reset)


def enabled() -> bool:
    return get_settings().quota_enabled


def charge(session: Session, user_id: str, count: int) -> Usage | None:
    """Count ``count`` evaluations for ``user_id`` in ``session``'s transaction; raises
    ``QuotaExceeded`` (the caller's transaction must then roll back) when that goes over
    the hour's or the month's limit. None when quotas are off or nothing is charged."""
    if count <= 0 or not enabled():
        return None
    row = session.execute(_CHARGE, {"user": user_id, "n": count}).first()
    if row is None:
        raise NotFound("user", [user_id])
    usage = _usage(row)
    if usage.hour > usage.hour_limit:
        raise QuotaExceeded("hour", count, usage)
    if usage.month > usage.month_limit:
        raise QuotaExceeded("month", count, usage)
    return usage


def check(session: Session, user_id: str, count: int) -> None:
    """Refuse now what ``charge`` would refuse, without charging (before slow work such as
    fetching a page); the charge itself still decides."""
    if count <= 0 or not enabled():
        return
    row = session.execute(_READ, {"user": user_id}).first()
    if row is None:
        raise NotFound("user", [user_id])
    usage = _usage(row)
    if usage.hour + count > usage.hour_limit:
        raise QuotaExceeded("hour", count, _plus(usage, count))
    if usage.month + count > usage.month_limit:
        raise QuotaExceeded("month", count, _plus(usage, count))


def _plus(usage: Usage, count: int) -> Usage:
    return Usage(
        usage.plan,
        usage.hour + count,
        usage.month + count,
        usage.hour_limit,
        usage.month_limit,
        usage.hour_resets_at,
        usage.month_resets_at,
    )


def usage_of(session: Session, user_id: str) -> Usage:
    row = session.execute(_READ, {"user": user_id}).first()
    if row is None:
        raise NotFound("user", [user_id])
    return _usage(row)


def set_plan(session: Session, user_id: str, plan: Plan) -> None:
    """Move ``user_id`` to ``plan``; the counters go on (the new limits apply at once)."""
    session.execute(
        text('UPDATE "User" SET plan = CAST(:p AS "Plan") WHERE id = :id'),
        {"p": plan.value, "id": user_id},
    )
