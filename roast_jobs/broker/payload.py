"""What the broker reads out of a kombu message before storing it, and back after."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MIN_PRIORITY, MAX_PRIORITY = 0, 9


class BadPayload(ValueError):
    """A stored row that is not a kombu message."""


@dataclass(slots=True)  # not frozen: built once per message on the bulk path
class Envelope:
    """The columns stored beside a message."""

    priority: int
    eta: datetime | None
    expires: datetime | None
    task_id: str | None
    payload: str
    #: At most one live message per (queue, key); see ``singleton_key()``.
    singleton_key: str | None = None
    #: A Celery retry (``retries`` > 0): it inherits the key of the job it retries.
    retried: bool = False


def clamp_priority(value: Any) -> int:
    try:
        return max(MIN_PRIORITY, min(MAX_PRIORITY, int(value)))
    except (TypeError, ValueError):
        return MIN_PRIORITY


def _parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    # Celery sends aware times when enable_utc is on (the default); a naive one is UTC.
    return when if when.tzinfo else when.replace(tzinfo=UTC)


#: ``task.apply_async(..., singleton_key="k")`` puts the key in the message properties;
#: ``headers={"singleton_key": "k"}`` works too.
SINGLETON_KEY = "singleton_key"
MAX_SINGLETON_KEY = 512


def singleton_key(props: dict[str, Any], headers: dict[str, Any]) -> str | None:
    key = props.get(SINGLETON_KEY) or headers.get(SINGLETON_KEY)
    if key is None or key == "":
        return None
    if not isinstance(key, str | int):
        raise ValueError(f"singleton_key must be a string, not {type(key).__name__}")
    key = str(key)
    if len(key) > MAX_SINGLETON_KEY:
        raise ValueError(f"singleton_key is longer than {MAX_SINGLETON_KEY} characters")
    return key


def envelope(message: dict[str, Any], native_delay: bool) -> Envelope:
    props = message.get("properties") or {}
    headers = message.get("headers") or {}
    eta = _parse_time(headers.get("eta")) if native_delay else None
    # kombu's per-message TTL (AMQP ``expiration``, milliseconds) expires a message in
    # the broker, as on RabbitMQ. Not a Celery task's: Celery copies the task's
    # ``expires`` into ``expiration``, but its contract is that the worker receives the
    # task, sees it expired and stores REVOKED, so that ``result.get()`` ends.
    expires = None
    expiration = props.get("expiration")
    if expiration not in (None, "") and not ("task" in headers and headers.get("expires")):
        try:
            expires = datetime.now(UTC) + timedelta(milliseconds=float(expiration))
        except (TypeError, ValueError):
            expires = None
    task_id = headers.get("id") if "task" in headers else None
    try:
        retried = int(headers.get("retries") or 0) > 0
    except (TypeError, ValueError):
        retried = False
    return Envelope(
        priority=clamp_priority(props.get("priority")),
        eta=eta,
        expires=expires,
        task_id=str(task_id) if task_id is not None else None,
        payload=json.dumps(message, separators=(",", ":")),
        singleton_key=singleton_key(props, headers),
        retried=retried and task_id is not None,
    )


#: Added to ``delivery_info`` on delivery: when the message was first written (epoch
#: seconds, the database's clock). Headers, body and properties arrive exactly as sent;
#: ``delivery_info`` is the broker's own (Celery passes it on as ``request.properties``).
SENT_AT = "sent_at"


def delivery_tag(row_id: int, receipt: int) -> str:
    """The tag of one delivery of a row: an ack names that delivery, not the row."""
    return f"{row_id}:{receipt}"


def split_tags(tags: list[Any]) -> dict[str, list[int]]:
    """Delivery tags as the ``ids``/``receipts`` arrays the statements take."""
    ids: list[int] = []
    receipts: list[int] = []
    for tag in tags:
        row_id, sep, receipt = str(tag).partition(":")
        if not sep:
            raise ValueError(f"not a roast-jobs delivery tag: {tag!r}")
        ids.append(int(row_id))
        receipts.append(int(receipt))
    return {"ids": ids, "receipts": receipts}


def decode(
    payload: str, row_id: int, receipt: int, delivery_count: int, created_at: float | None = None
) -> dict[str, Any]:
    """The kombu message of a row, tagged for this delivery; BadPayload if it is not one."""
    try:
        message = json.loads(payload)
    except (TypeError, ValueError) as exc:
        raise BadPayload(f"payload is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("properties"), dict):
        raise BadPayload("payload is not a kombu message (no properties)")
    props = message["properties"]
    info = props.get("delivery_info")
    if not isinstance(info, dict):
        info = props["delivery_info"] = {}
    props["delivery_tag"] = delivery_tag(row_id, receipt)
    info["redelivered"] = delivery_count > 1
    if created_at is not None:
        info[SENT_AT] = created_at
    message["redelivered"] = delivery_count > 1
    return message
