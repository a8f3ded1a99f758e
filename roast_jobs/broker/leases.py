"""Keep-alive: a live process never loses its messages or its queues to a timeout.

It renews the leases of held messages and touches the expiring queues (``x-expires``,
such as Celery's pidbox queues) it consumes. A thread, not an event-loop timer, so that
a task running in the worker's main thread (solo pool) or a blocked loop cannot let a
lease run out or a queue be swept as abandoned.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel import Channel

logger = logging.getLogger(__name__)

#: The longest the thread sleeps; it wakes sooner for queues with a short x-expires.
TICK = 1.0


class LeaseKeeper(threading.Thread):
    def __init__(self, channels: Callable[[], Iterable[Channel]], every: float) -> None:
        super().__init__(name="roast-jobs-leases", daemon=True)
        self._channels = channels
        self._every = every
        self._stop_event = threading.Event()
        self._pid = os.getpid()

    def run(self) -> None:
        last_renewal = time.monotonic()
        while not self._stop_event.wait(self._tick()):
            if os.getpid() != self._pid:
                return
            self.touch_all()
            if time.monotonic() - last_renewal >= self._every:
                last_renewal = time.monotonic()
                self.renew_all()

    def _tick(self) -> float:
        touch = [t for c in list(self._channels()) if (t := c.touch_every()) is not None]
        return min([self._every, TICK, *touch])

    def touch_all(self) -> None:
        for channel in list(self._channels()):
            if channel.closed:
                continue
            try:
                channel.touch_queues()
            except Exception as exc:
                logger.warning("could not keep queues alive: %r", exc)

    def renew_all(self) -> None:
        for channel in list(self._channels()):
            if channel.closed or channel._qos is None:
                continue
            held = channel.qos.held()
            if not held:
                continue
            try:
                kept = channel.renew(held)
            except Exception as exc:
                logger.warning("lease renewal failed for %d message(s): %r", len(held), exc)
                continue
            # Acked meanwhile, or lost to another consumer after an outage.
            lost = [t for t in held if t not in kept and t in channel.qos.held()]
            if lost:
                logger.warning(
                    "lost the lease of %d message(s) (ids %s): they may run again elsewhere",
                    len(lost),
                    lost[:10],
                )

    def stop(self) -> None:
        self._stop_event.set()
