"""Retry policy of roast-jobs tasks: the plan's pg-boss options, for Celery.

Defaults (``Settings``): 3 retries, 30 s first delay, doubling with jitter up to an hour,
one hour of run time. A task sets its own with ``retry_policy = RetryPolicy(...)``; one
send overrides it with ``JobManager.send(..., retry_limit=5, retry_delay=10)``, carried in
a message header that Celery's own retries keep passing on::

    @app.task(base=RoastTask, retry_policy=RetryPolicy(limit=5, delay=10))
    def evaluate(document_id): ...
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from roast_jobs.config import get_settings

#: The message header holding a per-send policy.
HEADER = "roast_retry"
#: ``JobManager.send`` keyword -> policy field.
SEND_OPTIONS = {
    "retry_limit": "limit",
    "retry_delay": "delay",
    "retry_backoff": "backoff",
    "retry_delay_max": "delay_max",
}


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 3
    delay: float = 30.0
    backoff: bool = True
    delay_max: float = 3600.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError("retry limit must be 0 or more")
        if self.delay < 0 or self.delay_max < 0:
            raise ValueError("retry delays must be 0 or more")

    @classmethod
    def from_settings(cls) -> RetryPolicy:
        s = get_settings()
        return cls(s.retry_limit, s.retry_delay, s.retry_backoff, s.retry_delay_max)

    def countdown(self, retries: int) -> float:
        """Seconds before retry number ``retries + 1``."""
        base = self.delay * (2**retries) if self.backoff else self.delay
        base = min(base, self.delay_max)
        if self.jitter and base > 0:
            # "Equal jitter": at least half the delay, so backoff still backs off.
            return base / 2 + random.uniform(0, base / 2)
        return base

    def merged(self, overrides: dict[str, Any] | None) -> RetryPolicy:
        if not overrides:
            return self
        known = {k: v for k, v in overrides.items() if k in self.__dataclass_fields__}
        return replace(self, **known)

    def header(self) -> dict[str, Any]:
        return asdict(self)


def policy_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take the ``retry_*`` send options out of ``options``: the policy overrides."""
    out: dict[str, Any] = {}
    for option, name in SEND_OPTIONS.items():
        if option in options:
            out[name] = options.pop(option)
    if out:
        RetryPolicy().merged(out)  # validates
    return out


class RoastTask(Task):
    """A Celery task that retries failures by its ``RetryPolicy``.

    Exceptions in ``retry_on`` (default: any) are retried with backoff until the limit,
    then fail the task; ``dont_retry_on`` fail at once. Celery's own ``self.retry()``,
    ``Ignore`` and ``Reject`` pass through untouched.
    """

    abstract = True
    retry_policy: ClassVar[RetryPolicy | None] = None
    retry_on: ClassVar[tuple[type[BaseException], ...]] = (Exception,)
    dont_retry_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def policy(self) -> RetryPolicy:
        base = self.retry_policy or RetryPolicy.from_settings()
        overrides = getattr(self.request, HEADER, None)
        return base.merged(overrides if isinstance(overrides, dict) else None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except Exception as exc:
            if isinstance(exc, self.dont_retry_on) or not isinstance(exc, self.retry_on):
                raise
            if self.request.called_directly:
                raise
            policy = self.policy()
            retries = self.request.retries or 0
            if retries >= policy.limit:
                raise
            extra: dict[str, Any] = {}
            overrides = getattr(self.request, HEADER, None)
            if isinstance(overrides, dict):  # keep the per-send policy for the next try
                extra["headers"] = {HEADER: overrides}
            raise self.retry(
                exc=exc, countdown=policy.countdown(retries), max_retries=policy.limit, **extra
            ) from exc
