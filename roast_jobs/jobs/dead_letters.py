"""Dead letters: messages that could not be delivered (rejected, poison, unreadable,
expired), kept with why. List, inspect, redrive to the original queue, purge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

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


class Redriven(NamedTuple):
    """A dead letter back in its queue."""

    message_id: int
    queue: str
    task_id: str | None


@dataclass(frozen=True)
class HeldBack:
    """A dead letter a redrive left where it is, and why."""

    dead_id: int
    queue: str
    task_id: str | None
    singleton_key: str | None
    #: The task id of the live job holding the key (None if it ended meanwhile), or the
    #: id of the dead letter with the same key that went instead.
    holder: str | None
    reason: str

    @classmethod
    def of(cls, row: Sequence[Any]) -> HeldBack:
        dead_id, queue, task_id, key, _new_id, why, holder = row
        if why == "duplicate":
            reason = (
                f"dead letter {holder} has the same singleton key {key!r} in queue {queue!r} "
                "and went instead; redrive this one after that job ends"
            )
        else:
            who = f"job {holder}" if holder else "a job that took it meanwhile"
            reason = (
                f"singleton key {key!r} of queue {queue!r} is held by {who}; redrive it "
                "after that job ends"
            )
        return cls(dead_id, queue, task_id, key, holder, reason)


class RedriveResult(list[Redriven]):
    """What a redrive moved, as a list of ``Redriven``; ``held`` is what it left, with why."""

    def __init__(self, moved: list[Redriven], held: list[HeldBack]) -> None:
        super().__init__(moved)
        self.held = held

    @classmethod
    def of(cls, rows: list[tuple[Any, ...]]) -> RedriveResult:
        moved = [Redriven(r[4], r[1], r[2]) for r in rows if r[4] is not None]
        return cls(moved, [HeldBack.of(r) for r in rows if r[4] is None])


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
    ) -> RedriveResult:
        """Move dead letters back to their queues as fresh messages: the given ``ids``,
        or with ``all`` every one (of ``queue``). Unknown ids are an error; nothing moves
        then.

        A singleton key admits one live message per queue: of dead letters sharing a key
        the oldest goes, and a letter whose key a live job holds stays. Returns what moved
        (``Redriven``: new message id, queue, task id); ``.held`` lists what stayed, with
        why (``HeldBack``)."""
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
        return RedriveResult.of(rows)

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
