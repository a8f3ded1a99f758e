"""Lease renewal: a live process never loses the messages it holds to a timeout.

A thread, not an event-loop timer, so that a task running in the worker's main thread
(solo pool) or a blocked loop cannot let leases run out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .channel import Channel

logger = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    def __init__(self, channels: Callable[[], Iterable[Channel]], every: float) -> None:
        super().__init__(name="roast-jobs-leases", daemon=True)
        self._channels = channels
        self._every = every
        self._stop_event = threading.Event()
        self._pid = os.getpid()

    def run(self) -> None:
        while not self._stop_event.wait(self._every):
            if os.getpid() != self._pid:
                return
            self.renew_all()

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
