"""Dead letters: messages that could not be delivered (rejected, poison, unreadable,
expired), kept with why. List, inspect, redrive to the original queue, purge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from .errors import DeadLetterNotFound
from .link import BrokerLink
from .state import DeadRow, task_call


@dataclass(frozen=True)
class DeadLetter:
    id: int
    queue: str
    reason: str
    dead_at: datetime
    created_at: datetime
    delivery_count: int
    delivered_to: list[str]
    task_id: str | None
    task: str | None
    args: Any
    kwargs: Any
    singleton_key: str | None
    payload: str

    @classmethod
    def of(cls, row: DeadRow) -> DeadLetter:
        name, args, kwargs = task_call(row.payload)
        return cls(
            id=row.id,
            queue=row.queue,
            reason=row.reason,
            dead_at=row.dead_at,
            created_at=row.created_at,
            delivery_count=row.delivery_count,
            delivered_to=list(row.delivered_to or []),
            task_id=row.task_id,
            task=name,
            args=args,
            kwargs=kwargs,
            singleton_key=row.singleton_key,
            payload=row.payload,
        )

    def as_dict(self, with_payload: bool = False) -> dict[str, Any]:
        out = dict(self.__dict__)
        if not with_payload:
            out.pop("payload")
        for key in ("dead_at", "created_at"):
            out[key] = out[key].astimezone(UTC).isoformat()
        return out


class DeadLetters:
    """The dead-letter table of an app's broker."""

    def __init__(self, app: Celery | BrokerLink) -> None:
        self.link = app if isinstance(app, BrokerLink) else BrokerLink(app)

    def list(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rows = self.link.fetch(self.link.jobs.dead_list, queue=queue, limit=limit)
        return [DeadLetter.of(DeadRow(*r)) for r in rows]

    def get(self, dead_id: int) -> DeadLetter:
        rows = self.link.fetch(self.link.jobs.dead_get, id=int(dead_id))
        if not rows:
            raise DeadLetterNotFound(dead_id)
        return DeadLetter.of(DeadRow(*rows[0]))

    def redrive(
        self, ids: list[int] | None = None, *, queue: str | None = None, all: bool = False
    ) -> list[tuple[int, str, str | None]]:
        """Move dead letters back to their queues as fresh messages: the given ``ids``,
        or with ``all`` every one (of ``queue``). Returns (new message id, queue, task
        id) for each moved. Unknown ids are an error; nothing moves then."""
        ids = [int(i) for i in ids or []]
        if not ids and not all:
            raise ValueError("name the dead letters to redrive, or pass all=True")
        self._check_known(ids)
        rows = self.link.fetch(
            self.link.jobs.dead_redrive,
            ids=ids,
            all=all,
            queue=queue,
            channel=self.link.notify_channel,
        )
        return [(r[0], r[1], r[2]) for r in rows]

    def purge(
        self, ids: list[int] | None = None, *, queue: str | None = None, all: bool = False
    ) -> int:
        """Delete dead letters for good: the given ``ids``, or with ``all`` every one
        (of ``queue``). Returns how many went."""
        ids = [int(i) for i in ids or []]
        if not ids and not all:
            raise ValueError("name the dead letters to purge, or pass all=True")
        self._check_known(ids)
        return int(self.link.fetch(self.link.jobs.dead_purge, ids=ids, all=all, queue=queue)[0][0])

    def _check_known(self, ids: list[int]) -> None:
        for dead_id in ids:
            self.get(dead_id)
