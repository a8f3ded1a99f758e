"""Turning a kombu connection into libpq settings, and a small fork-safe connection pool.

Every broker statement is a single autocommit statement, so a connection can be borrowed
per operation from any thread; acks therefore never depend on the channel that received
the message still being open.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq

from .options import BrokerOptions

SCHEMES = ("postgresql", "postgres", "pgsql")
# Errors after which a connection (and probably every idle one) is unusable.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """Return (libpq URL, broker options) from a broker URL.

    Query parameters that name a broker option are taken out; the rest (sslmode, ...)
    stay for libpq.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"not a PostgreSQL URL: {mask_url(url)!r} (expected postgresql://user:pass@host/db)"
        )
    ours = BrokerOptions.names()
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ours}
    rest = [(k, v) for k, v in query if k not in ours]
    # Built by hand: urlunsplit drops the '//' of an empty host (postgresql:///db?host=/run).
    libpq = f"postgresql://{parts.netloc}{parts.path}"
    if rest:
        libpq += "?" + urlencode(rest)
    return libpq, options


def conninfo_from_client(client: Any) -> tuple[str, dict[str, str]]:
    """Conninfo for a kombu ``Connection``: its URL, or its separate fields."""
    hostname = client.hostname or "localhost"
    if "://" in hostname:
        return split_url(hostname)
    user = quote(client.userid or "", safe="")
    password = client.password
    auth = user
    if password:
        auth += ":" + quote(str(password), safe="")
    if auth:
        auth += "@"
    port = f":{client.port}" if client.port else ""
    vhost = (client.virtual_host or "").strip("/")
    return f"postgresql://{auth}{hostname}{port}/{quote(vhost)}", {}


def mask_url(url: str, mask: str = "**") -> str:
    """The URL with its password replaced by ``mask``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{mask}@{netloc[1]}"))


class Pool:
    """Idle autocommit connections for one conninfo in one process."""

    def __init__(
        self, conninfo: str, options: BrokerOptions, synchronous_commit: str | None = None
    ) -> None:
        self.conninfo = conninfo
        self.options = options
        self.synchronous_commit = synchronous_commit
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        kwargs: dict[str, Any] = {
            "autocommit": autocommit,
            "connect_timeout": max(1, int(self.options.connect_timeout)),
            "application_name": "roast-jobs-broker",
        }
        if self.synchronous_commit:
            kwargs["options"] = f"-c synchronous_commit={self.synchronous_commit}"
        conn = psycopg.connect(self.conninfo, **kwargs)
        conn.prepare_threshold = self.options.prepare_threshold
        return conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.connect()
        try:
            yield conn
        except CONNECTION_ERRORS:
            # The server went away or the backend was killed: the idle ones are
            # probably dead too, so drop them all rather than fail once per connection.
            self.discard(conn)
            self.clear()
            raise
        except BaseException:
            self._give_back(conn)
            raise
        else:
            self._give_back(conn)

    def _give_back(self, conn: psycopg.Connection) -> None:
        healthy = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        if healthy:
            with self._lock:
                if len(self._idle) < self.options.pool_size:
                    self._idle.append(conn)
                    return
        self.discard(conn)

    def discard(self, conn: psycopg.Connection) -> None:
        if os.getpid() == self._pid:
            with suppress(Exception):
                conn.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self.discard(conn)


_pools: dict[tuple[int, str, BrokerOptions, bool], Pool] = {}
_pools_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay held in the child.
    global _pools_lock
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_pool(conninfo: str, options: BrokerOptions, durable: bool = True) -> Pool:
    """The pool for this process. A forked child gets its own: sockets are never shared.

    Publishes use the durable pool (the server's ``synchronous_commit``, or the
    option's). Claims, acks and lease updates use one with ``synchronous_commit=off``:
    if the server crashes before such a commit reaches disk, the message is delivered
    again (at least once), never lost, and no consumer waits for a WAL flush.
    """
    key = (os.getpid(), conninfo, options, durable)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            sync = options.synchronous_commit if durable else "off"
            pool = _pools[key] = Pool(conninfo, options, sync)
        return pool
