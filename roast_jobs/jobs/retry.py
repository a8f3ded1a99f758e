"""Retry policy of roast-jobs tasks: the plan's pg-boss options, for Celery.

Defaults (``Settings``): 3 retries, 30 s first delay, doubling with jitter up to an hour,
one hour of run time. A task sets its own with ``retry_policy = RetryPolicy(...)``; one
send overrides it with ``JobManager.send(..., retry_limit=5, retry_delay=10)``, carried in
a message header that Celery's own retries keep passing on::

    @app.task(base=RoastTask, retry_policy=RetryPolicy(limit=5, delay=10))
    def evaluate(document_id): ...

``JobManager.retry_job`` sends a finished job again as it was sent: ``stored_options``
says how (kept in the result table's ``options`` column), ``resend_options`` turns that
back into ``apply_async`` options.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from celery.exceptions import Ignore, Reject, Retry

from roast_jobs.broker.capture import PsycopgSink, current_target, publishing
from roast_jobs.broker.payload import singleton_key
from roast_jobs.broker.sql.jobs import job_statements
from roast_jobs.broker.transport import Transport
from roast_jobs.config import get_settings

from .singleton import SingletonTask

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


class RoastTask(SingletonTask):
    """A Celery task that retries failures by its ``RetryPolicy``.

    Exceptions in ``retry_on`` (default: any) are retried with backoff until the limit,
    then fail the task; ``dont_retry_on`` fail at once. Celery's own ``self.retry()``,
    ``Ignore`` and ``Reject`` pass through untouched. A duplicate singleton send answers
    with the holder's result (``SingletonTask``).
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

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Celery's retry. On the roast-jobs broker the retry's publish and the end of
        this delivery are one transaction: Celery publishes, then acks when the run
        returns, and a worker killed in between leaves the old delivery to run again
        beside its retry. Inside a caller's ``enqueue_in``, ``retry(throw=False)`` joins
        the caller's transaction, as any publish does."""
        call = dict(args=args, kwargs=kwargs, exc=exc, eta=eta, countdown=countdown,
                    max_retries=max_retries, **options)  # fmt: skip
        request = self.request
        if request.called_directly or request.is_eager:
            return super().retry(throw=throw, **call)
        if current_target() is not None and not throw:
            return super().retry(throw=False, **call)  # the caller's transaction decides
        with self.app.connection_for_write() as conn:
            transport = conn.transport
            if not isinstance(transport, Transport):
                return super().retry(throw=throw, **call)
            sent: Retry | None = None
            try:
                # Its own transaction even inside a caller's enqueue_in: raised, the retry
                # rolls the caller's back, and would take the retry with it. The delivery
                # is ended only if no other transaction holds it (the caller's, after an
                # ack_in): then Celery's own late ack ends it, as before.
                with transport.pool.connection() as db, db.transaction():
                    with publishing(sink=PsycopgSink(db)):
                        sent = super().retry(throw=False, **call)
                    db.execute(job_statements(transport.options.schema).end_leased_unheld,
                               {"task_id": request.id})  # fmt: skip
            except psycopg.Error as error:
                if sent is None:  # the task's own error, re-raised by Celery: out of retries
                    raise
                # As Celery does when a retry cannot be sent: to the dead letters, not a
                # FAILURE that hides the task's own error.
                raise Reject(error, requeue=False) from error
        assert sent is not None  # super().retry(throw=False) returns or raises
        if throw:
            raise sent
        return sent


# -- how a job was sent, for retry_job ------------------------------------------------


def stored_options(
    priority: Any, timelimit: Any, key: str | None, policy: Any, expires: Any
) -> dict[str, Any]:
    """What the result table keeps of one send (JSON): enough to send the job again."""
    paired = isinstance(timelimit, list | tuple) and len(timelimit) == 2
    hard, soft = timelimit if paired else (None, None)
    if isinstance(expires, datetime):
        expires = expires.isoformat()
    return {
        "priority": priority,
        "time_limit": hard,
        "soft_time_limit": soft,
        "singleton_key": key,
        HEADER: policy if isinstance(policy, dict) else None,
        "expires": expires if isinstance(expires, str) else None,
    }


def _key(props: Mapping[str, Any], headers: Mapping[str, Any]) -> str | None:
    try:
        return singleton_key(dict(props), dict(headers))
    except ValueError:  # refused at send already; nothing to keep
        return None


def options_of_request(request: Any) -> dict[str, Any]:
    """``stored_options`` of a task request (Celery's ``Context`` on the worker)."""
    props = getattr(request, "properties", None)
    props = props if isinstance(props, dict) else {}
    headers = {"singleton_key": getattr(request, "singleton_key", None)}
    return stored_options(
        (getattr(request, "delivery_info", None) or {}).get("priority"),
        getattr(request, "timelimit", None),
        _key(props, headers),
        getattr(request, HEADER, None),
        getattr(request, "expires", None),
    )


def options_of_message(message: Mapping[str, Any]) -> dict[str, Any]:
    """``stored_options`` of a stored kombu message (a broker row's payload)."""
    props = message.get("properties")
    props = props if isinstance(props, dict) else {}
    headers = message.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    return stored_options(
        props.get("priority"),
        headers.get("timelimit"),
        _key(props, headers),
        headers.get(HEADER),
        headers.get("expires"),
    )


def resend_options(stored: Mapping[str, Any], sent_at: datetime | None) -> dict[str, Any]:
    """``apply_async`` options sending a job again as ``stored`` says it was sent.

    No countdown or eta: the retry is due now. An expiry keeps its window (the original
    expiry minus when the job was sent), counted from now: the original moment has
    passed, and a retry that expires at once would be no retry.
    """
    out: dict[str, Any] = {}
    for name in ("priority", "time_limit", "soft_time_limit", "singleton_key"):
        if stored.get(name) is not None:
            out[name] = stored[name]
    policy = stored.get(HEADER)
    if isinstance(policy, dict) and policy:
        out["headers"] = {HEADER: policy}
    window = _window(stored.get("expires"), sent_at)
    if window is not None:
        out["expires"] = window
    return out


def _window(expires: Any, sent_at: datetime | None) -> float | None:
    if not isinstance(expires, str) or sent_at is None:
        return None
    try:
        when = datetime.fromisoformat(expires)
    except ValueError:
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    seconds = (when - sent_at).total_seconds()
    return seconds if seconds > 0 else None
