"""Acks on their way to the database: kept until a statement that deletes them commits.

An ack made in the worker's event loop is not sent at once: it rides with the next claim
(one round trip for both) or a flush a few milliseconds later. Until then it lives here,
one outbox per process and broker, not on the channel, so that

- a claim or flush that fails (server restart, killed backend) leaves it to the next one;
- a channel that stopped consuming (``cancel_consumer``) or closed still gets it flushed;
- the lease keeper renews its lease meanwhile, so the message is not delivered again.

Acks name one delivery (``id:receipt``), so sending one twice, or after the lease ended
and the message went elsewhere, removes nothing it should not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

_outboxes: dict[tuple[int, str, str], AckOutbox] = {}
_registry_lock = threading.Lock()


class AckOutbox:
    def __init__(self) -> None:
        self._tags: dict[str, None] = {}  # insertion-ordered set
        # Taken by a statement not yet committed: no other statement carries them, since
        # two deletes of the same rows in different orders deadlock each other.
        self._in_flight: set[str] = set()
        self._lock = threading.Lock()

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags[tag] = None

    def pending(self) -> list[str]:
        """Every ack not yet durable, in flight or not (their leases need renewing)."""
        with self._lock:
            return list(self._tags)

    def take(self) -> list[str]:
        """The acks no other statement carries now, for one statement to carry: then
        ``done`` when it committed, ``release`` when it failed."""
        with self._lock:
            tags = [tag for tag in self._tags if tag not in self._in_flight]
            self._in_flight.update(tags)
            return tags

    def release(self, tags: list[str]) -> None:
        """The statement carrying ``tags`` failed: they wait for the next one."""
        with self._lock:
            self._in_flight.difference_update(tags)

    def __len__(self) -> int:
        return len(self._tags)

    def done(self, tags: list[str]) -> None:
        """``tags`` are durable now: forget them."""
        with self._lock:
            for tag in tags:
                self._tags.pop(tag, None)
            self._in_flight.difference_update(tags)

    def flush(self, send: Callable[[list[str]], object]) -> int:
        """Send what is pending with ``send``; on an error they stay for the next try."""
        tags = self.take()
        if tags:
            try:
                send(tags)
            except BaseException:
                self.release(tags)
                raise
            self.done(tags)
        return len(tags)


def outbox_for(conninfo: str, schema: str) -> AckOutbox:
    """The outbox of this process for one broker (a forked child gets its own)."""
    key = (os.getpid(), conninfo, schema)
    with _registry_lock:
        box = _outboxes.get(key)
        if box is None:
            box = _outboxes[key] = AckOutbox()
        return box


def _reset_after_fork() -> None:
    # The parent's acks are the parent's to send; a lock held at fork would stay held.
    global _registry_lock
    _registry_lock = threading.Lock()
    _outboxes.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
