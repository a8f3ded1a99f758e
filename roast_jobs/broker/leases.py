"""Keep-alive: a live process never loses its messages, consumers or queues to a timeout.

A thread, not an event-loop timer, so that a task running in the worker's main thread
(solo pool) or a blocked loop cannot let a lease run out, a consumer lapse or a queue be
swept as abandoned. What it does on each round is the transport's ``keep_alive``; this
module only runs it.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Wait this long after a round that failed before the next.
RETRY_AFTER = 1.0


class KeepAlive(threading.Thread):
    """Calls ``step`` until stopped; ``step`` returns the seconds to wait before the next
    call. ``step`` is held weakly: the thread ends when its owner is gone."""

    def __init__(self, step: weakref.WeakMethod[Callable[[], float]]) -> None:
        super().__init__(name="roast-jobs-keepalive", daemon=True)
        self._step = step
        self._stop_event = threading.Event()
        self._pid = os.getpid()

    def run(self) -> None:
        wait = 0.0
        while not self._stop_event.wait(wait):
            if os.getpid() != self._pid:
                return
            step = self._step()
            if step is None:
                return
            try:
                wait = step()
            except Exception as exc:  # the server may be restarting: try again soon
                logger.warning("keep-alive round failed: %r", exc)
                wait = RETRY_AFTER
            del step  # not held while waiting

    def stop(self) -> None:
        self._stop_event.set()
