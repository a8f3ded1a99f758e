"""The LISTEN connection that wakes consumers when messages arrive."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import threading
import time
import weakref
from dataclasses import dataclass

import psycopg

from .connections import Pool, disown, mask_url

logger = logging.getLogger(__name__)

SEPARATOR = "\x1f"
#: Payloads starting with this check delivery (see ``Probe``); they wake no queue.
PROBE_PREFIX = SEPARATOR + "probe "
#: How long the first connect waits for its check notification.
PROBE_WAIT = 1.0


class Wakeup:
    """One notification: a queue has a message now, or will in ``delay`` seconds (counted
    on the database's clock when it was sent, so no two hosts' clocks are compared)."""

    __slots__ = ("delay", "queue")

    def __init__(self, queue: str, delay: float | None) -> None:
        self.queue = queue
        self.delay = delay

    @classmethod
    def parse(cls, payload: str) -> Wakeup:
        queue, sep, delay = payload.partition(SEPARATOR)
        if sep:
            try:
                return cls(queue, float(delay))
            except ValueError:
                pass
        return cls(queue, None)


@dataclass(frozen=True)
class Probe:
    """How to check that notifications reach the LISTEN connection: NOTIFY on ``channel``
    through ``pool``, the way publishes go, with ``notify_sql`` (``%(channel)s``,
    ``%(notes)s``). Behind PgBouncer in transaction mode they do not."""

    pool: Pool
    notify_sql: str
    channel: str


# (listen conninfo, notify conninfo) pairs checked by this process: once is enough.
_probed: set[tuple[str, str]] = set()
_probed_lock = threading.Lock()


class Listener:
    """A dedicated autocommit connection LISTENing on the broker's channel."""

    def __init__(self, pool: Pool, listen_sql: str, probe: Probe | None = None) -> None:
        self.pool = pool
        self.listen_sql = listen_sql
        self.probe = probe
        self._conn: psycopg.Connection | None = None
        self._pending: list[Wakeup] = []  # read while checking delivery
        self._pid = os.getpid()
        _listeners.add(self)

    @property
    def connected(self) -> bool:
        if self._pid != os.getpid():
            self.forget_inherited()  # forked without Python's fork hooks
        return self._conn is not None and not self._conn.closed

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's connection, unused and unclosed, so that the
        next connect opens one of this process (reading the parent's would steal its
        wake-ups)."""
        conn, self._conn = self._conn, None
        self._pending = []
        self._pid = os.getpid()
        if conn is not None:
            disown(conn)

    def connect(self) -> None:
        if self.connected:
            return
        conn = self.pool.connect(autocommit=True)
        try:
            conn.execute(self.listen_sql)
            self._conn = conn
            if self.probe is not None:
                self._check_delivery(self.probe)
        except BaseException:
            # Half set up (the server refused the check's connection, say): close it,
            # or every retry of the caller would leave one more LISTEN session behind.
            self.close()
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def _check_delivery(self, probe: Probe) -> None:
        """Warn, once per process and pair of servers, if notifications do not arrive."""
        key = (self.pool.conninfo, probe.pool.conninfo)
        with _probed_lock:
            if key in _probed:
                return
            _probed.add(key)
        try:
            delivered = self._probe(probe)
        except BaseException:
            with _probed_lock:
                _probed.discard(key)  # check on the next connect instead
            raise
        if not delivered:
            logger.warning(
                "a test notification did not reach the broker's LISTEN connection (%s) "
                "within %.0f s: consumers will pick up new messages only at the "
                "polling_interval poll (every %s s). PgBouncer in transaction mode cannot "
                "carry LISTEN: set the transport option listen_url to a direct connection "
                "to the same database.",
                mask_url(self.pool.conninfo),
                PROBE_WAIT,
                self.pool.options.polling_interval,
            )

    def _probe(self, probe: Probe) -> bool:
        """NOTIFY through ``probe.pool``; True if it arrives here within ``PROBE_WAIT``."""
        note = f"{PROBE_PREFIX}{os.getpid()} {secrets.token_hex(8)}"
        with probe.pool.connection() as conn:
            conn.execute(probe.notify_sql, {"channel": probe.channel, "notes": [note]})
        deadline = time.monotonic() + PROBE_WAIT
        while True:
            payloads = self._read()
            self._pending.extend(self._wakeups(payloads))
            left = deadline - time.monotonic()
            if note in payloads or left <= 0:
                return note in payloads
            select.select([self.fileno()], [], [], left)

    def fileno(self) -> int:
        self.connect()
        assert self._conn is not None
        return self._conn.pgconn.socket

    def drain(self) -> list[Wakeup]:
        """Read whatever notifications have arrived, without blocking."""
        out, self._pending = self._pending, []
        return out + self._wakeups(self._read())

    def _read(self) -> list[str]:
        """The payloads that have arrived."""
        conn = self._conn
        if conn is None:
            return []
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            self.close()
            raise psycopg.OperationalError(f"broker LISTEN connection lost: {exc}") from exc
        out: list[str] = []
        while True:
            n = pgconn.notifies()
            if n is None:
                break
            out.append(n.extra.decode("utf-8", "replace"))
        return out

    @staticmethod
    def _wakeups(payloads: list[str]) -> list[Wakeup]:
        # Any process's delivery checks come on the channel too: they wake nothing.
        return [Wakeup.parse(p) for p in payloads if not p.startswith(PROBE_PREFIX)]

    def wait(self, timeout: float) -> list[Wakeup]:
        """Block up to ``timeout`` seconds for notifications."""
        fd = self.fileno()
        ready = self.drain()
        if ready or timeout <= 0:
            return ready
        readable, _, _ = select.select([fd], [], [], timeout)
        return self.drain() if readable else []

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._pending = []
        if conn is not None and os.getpid() == self._pid:
            with contextlib.suppress(Exception):
                conn.close()


# Every listener, including those a Transport created before a fork still points at.
_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


def _forget_inherited_listeners() -> None:
    for listener in list(_listeners):
        listener.forget_inherited()


os.register_at_fork(after_in_child=_forget_inherited_listeners)
