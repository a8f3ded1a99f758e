"""The LISTEN connection that wakes consumers when messages arrive."""

from __future__ import annotations

import contextlib
import logging
import os
import select

import psycopg

from .connections import Pool

logger = logging.getLogger(__name__)

SEPARATOR = "\x1f"


class Wakeup:
    """One notification: a queue has a message now, or will at ``due`` (epoch seconds)."""

    __slots__ = ("due", "queue")

    def __init__(self, queue: str, due: float | None) -> None:
        self.queue = queue
        self.due = due

    @classmethod
    def parse(cls, payload: str) -> Wakeup:
        queue, sep, due = payload.partition(SEPARATOR)
        if sep:
            try:
                return cls(queue, float(due))
            except ValueError:
                pass
        return cls(queue, None)


class Listener:
    """A dedicated autocommit connection LISTENing on the broker's channel."""

    def __init__(self, pool: Pool, listen_sql: str) -> None:
        self.pool = pool
        self.listen_sql = listen_sql
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def connect(self) -> None:
        if self.connected:
            return
        conn = self.pool.connect(autocommit=True)
        conn.execute(self.listen_sql)
        self._conn = conn

    def fileno(self) -> int:
        self.connect()
        assert self._conn is not None
        return self._conn.pgconn.socket

    def drain(self) -> list[Wakeup]:
        """Read whatever notifications have arrived, without blocking."""
        conn = self._conn
        if conn is None:
            return []
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as exc:
            self.close()
            raise psycopg.OperationalError(f"broker LISTEN connection lost: {exc}") from exc
        out: list[Wakeup] = []
        while True:
            n = pgconn.notifies()
            if n is None:
                break
            out.append(Wakeup.parse(n.extra.decode("utf-8", "replace")))
        return out

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
        if conn is not None and os.getpid() == self._pid:
            with contextlib.suppress(Exception):
                conn.close()
