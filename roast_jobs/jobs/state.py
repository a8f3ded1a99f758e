"""One job state across the broker table, the dead letters and Celery's results."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from celery import states
from kombu import serialization


class JobState(StrEnum):
    CREATED = "created"  # waiting in its queue
    SCHEDULED = "scheduled"  # delayed (countdown/eta) until visible_at
    ACTIVE = "active"  # leased by a worker, or started
    RETRY = "retry"  # failed, a retry is queued or delayed
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # its expiry passed before it ran
    DEAD_LETTER = "dead_letter"  # rejected, poison or unreadable: kept in dead_letter


#: States a job leaves only by running (or being cancelled).
PENDING_STATES = frozenset({JobState.CREATED, JobState.SCHEDULED, JobState.RETRY})
#: States from which retry_job re-sends.
RETRYABLE_STATES = frozenset(
    {JobState.FAILED, JobState.CANCELLED, JobState.EXPIRED, JobState.DEAD_LETTER}
)
#: States cancel_job acts on.
CANCELLABLE_STATES = PENDING_STATES | {JobState.ACTIVE}


@dataclass(frozen=True)
class MessageRow:
    id: int
    queue: str
    priority: int
    created_at: datetime
    visible_at: datetime
    expires_at: datetime | None
    lease_owner: str | None
    delivery_count: int
    delivered_to: list[str] | None
    singleton_key: str | None
    payload: str
    now: datetime

    @property
    def leased(self) -> bool:
        return self.lease_owner is not None and self.visible_at > self.now

    @property
    def expired(self) -> bool:
        """Past its TTL, or a Celery task past its ``expires`` (a worker will revoke it)."""
        if self.expires_at is not None and self.expires_at <= self.now:
            return True
        expires = _parse_time(self.headers().get("expires"))
        return expires is not None and expires <= self.now

    def headers(self) -> dict[str, Any]:
        try:
            message = json.loads(self.payload)
        except ValueError:
            return {}
        headers = message.get("headers") if isinstance(message, dict) else None
        return headers if isinstance(headers, dict) else {}


@dataclass(frozen=True)
class DeadRow:
    id: int
    queue: str
    priority: int
    created_at: datetime
    dead_at: datetime
    reason: str
    delivery_count: int
    delivered_to: list[str] | None
    singleton_key: str | None
    task_id: str | None
    payload: str


@dataclass(frozen=True)
class ResultRow:
    """Celery's stored state of a task (result_extended), plus roast-jobs' columns."""

    status: str
    date_done: datetime | None
    date_created: datetime | None
    date_started: datetime | None
    options: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    name: str | None = None
    queue: str | None = None
    priority: int | None = None
    created_at: datetime | None = None
    #: When it becomes (or became) claimable: the end of a delay or a retry wait.
    run_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    retry_count: int = 0
    delivery_count: int = 0
    worker: str | None = None
    singleton_key: str | None = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    args: Any = None
    kwargs: Any = None
    #: Why it is a dead letter (or expired), when it is one.
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["state"] = self.state.value
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.astimezone(UTC).isoformat()
        if out["result"] is not None and not _jsonable(out["result"]):
            out["result"] = repr(out["result"])
        return out


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _aware(value: datetime | None) -> datetime | None:
    # The result table's times come aware (date_done through sql.DONE_AT); a naive one
    # would be UTC, as Celery's own are.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def derive(
    job_id: str, msg: MessageRow | None, dead: DeadRow | None, res: ResultRow | None
) -> Job | None:
    """The state of one job; None when nothing is known of it."""
    meta = res.meta if res else {}
    status = res.status if res else None
    common: dict[str, Any] = {
        "name": meta.get("name"),
        "queue": meta.get("queue"),
        "retry_count": int(meta.get("retries") or 0),
        "worker": meta.get("worker"),
        "args": meta.get("args"),
        "kwargs": meta.get("kwargs"),
        "created_at": _aware(res.date_created) if res else None,
        "started_at": _aware(res.date_started) if res else None,
        "priority": (res.options or {}).get("priority") if res else None,
    }
    done = _aware(res.date_done) if res else None
    final = status in states.READY_STATES
    if msg is not None and msg.leased and final and done is not None and done >= msg.created_at:
        # This run's result is stored and its ack is on the way (acks come after the
        # result): the job is finished, not running. A result older than the message is
        # an earlier run's (a retry under the same id), and the message tells the state.
        msg = None
    if msg is not None:
        headers = msg.headers()
        retries = int(headers.get("retries") or 0)
        if msg.leased:
            state = JobState.ACTIVE
        elif msg.expired:
            state = JobState.EXPIRED
        elif retries > 0 or status == states.RETRY:
            state = JobState.RETRY
        elif msg.visible_at > msg.now:
            state = JobState.SCHEDULED
        else:
            state = JobState.CREATED
        if common["args"] is None and common["kwargs"] is None:
            # No stored result yet (the job waits): its call is in the message.
            _name, common["args"], common["kwargs"] = task_call(msg.payload)
        common.update(
            name=headers.get("task") or common["name"],
            queue=msg.queue,
            priority=msg.priority,
            created_at=msg.created_at,
            retry_count=max(retries, common["retry_count"]),
            singleton_key=msg.singleton_key,
        )
        if state is not JobState.ACTIVE:
            common["started_at"] = None
        return Job(
            job_id,
            state,
            run_at=msg.visible_at if not msg.leased else None,
            delivery_count=msg.delivery_count,
            **common,
        )
    if dead is not None and not (final and done is not None and done > dead.dead_at):
        return Job(
            job_id,
            JobState.EXPIRED if dead.reason == "expired" else JobState.DEAD_LETTER,
            completed_at=dead.dead_at,
            delivery_count=dead.delivery_count,
            reason=dead.reason,
            **{
                **common,
                "queue": dead.queue,
                "priority": dead.priority,
                "created_at": common["created_at"] or dead.created_at,
                "singleton_key": dead.singleton_key,
            },
        )
    if res is None:
        return None
    result = meta.get("result")
    if status == states.SUCCESS:
        return Job(job_id, JobState.COMPLETED, completed_at=done, result=result, **common)
    if status == states.FAILURE:
        return Job(
            job_id,
            JobState.FAILED,
            completed_at=done,
            error=_error(result),
            traceback=meta.get("traceback"),
            **common,
        )
    if status == states.REVOKED:
        # A worker revokes a task it received after its ``expires``: TaskRevokedError('expired').
        expired = str(result) == "expired"
        return Job(
            job_id,
            JobState.EXPIRED if expired else JobState.CANCELLED,
            completed_at=done,
            error=_error(result),
            reason="expired" if expired else None,
            **common,
        )
    if status == states.RETRY:
        return Job(job_id, JobState.RETRY, error=_error(result), **common)
    if status == states.STARTED:
        return Job(job_id, JobState.ACTIVE, **common)
    return Job(job_id, JobState.CREATED, **common)


def task_call(payload: str) -> tuple[str | None, Any, Any]:
    """(task name, args, kwargs) of a stored Celery message; Nones when unreadable."""
    try:
        message = json.loads(payload)
        body = base64.b64decode(message["body"])
        decoded = serialization.loads(body, message["content-type"], message["content-encoding"])
        args, kwargs = decoded[0], decoded[1]
        return message["headers"].get("task"), list(args), dict(kwargs)
    except Exception:  # garbage rows are a fact of life here; they just have no arguments
        return None, None, None


def _error(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return str(result)
