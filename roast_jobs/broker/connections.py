"""Turning a kombu connection into libpq settings, and a small fork-safe connection pool.

Every broker statement is a single autocommit statement, so a connection can be borrowed
per operation from any thread; acks therefore never depend on the channel that received
the message still being open.

Fork safety: a process forked after connecting (gunicorn ``--preload``, uWSGI, prefork)
inherits the parent's sockets. In the child every pool lets go of them, unused, and opens
its own.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode, urlsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from .options import BrokerOptions, check_synchronous_commit

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
        # %20, not '+': libpq decodes only %-escapes ('options=-c x=1' must keep its space).
        libpq += "?" + urlencode(rest, quote_via=quote)
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


#: Query parameters whose name contains one of these hold secrets (password, sslpassword).
SECRET_WORDS = ("password", "passwd", "secret", "token")


def mask_url(url: str, mask: str = "**") -> str:
    """The URL with every secret replaced by ``mask``: the password of its userinfo, the
    values of secret-like query parameters, and those inside URLs in the query
    (``listen_url``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:{mask}@{host}"
    query = "&".join(_mask_param(p, mask) for p in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Built by hand: urlunsplit drops the '//' of an empty host (postgresql:///db?host=/run).
    masked = f"{parts.scheme}://{netloc}{parts.path}"
    masked += f"?{query}" if query else ""
    return masked + (f"#{parts.fragment}" if parts.fragment else "")


def _mask_param(param: str, mask: str) -> str:
    name, eq, value = param.partition("=")
    if not eq:
        return param
    if any(word in unquote_plus(name).lower() for word in SECRET_WORDS):
        return f"{name}={mask}"
    inner = unquote_plus(value)
    if "://" in inner:
        masked = mask_url(inner, mask)
        if masked != inner:
            return f"{name}={quote(masked, safe=':/@*')}"
    return param


def libpq_options(conninfo: str, synchronous_commit: str | None) -> str | None:
    """The libpq ``options`` to connect with: the user's, then ours, or None to leave the
    user's alone.

    Ours go last so that they win (PostgreSQL applies ``-c`` settings in order); the
    user's come from ``conninfo`` or, as libpq would take them, from ``PGOPTIONS``.
    """
    if not synchronous_commit:
        return None
    ours = f"-c synchronous_commit={check_synchronous_commit(synchronous_commit)}"
    theirs = conninfo_to_dict(conninfo).get("options") or _default_options()
    return f"{theirs} {ours}" if theirs else ours


def _default_options() -> str:
    """libpq's default ``options``: ``PGOPTIONS`` if set."""
    for option in pq.Conninfo.get_defaults():
        if option.keyword == b"options" and option.val:
            return option.val.decode()
    return ""


_inherited: list[psycopg.Connection] = []


def disown(conn: psycopg.Connection) -> None:
    """Let go of a connection inherited from the parent process, leaving its session be.

    ``close()`` would send Terminate on the parent's socket and end its session. Closing
    only this process's copy of the descriptor sends nothing (and lets the server see the
    parent go when it does). The object is kept: collecting an open connection warns.
    """
    with suppress(Exception):
        os.close(conn.pgconn.socket)
    _inherited.append(conn)


class Pool:
    """Idle autocommit connections for one conninfo in one process."""

    def __init__(
        self, conninfo: str, options: BrokerOptions, synchronous_commit: str | None = None
    ) -> None:
        if synchronous_commit is not None:
            check_synchronous_commit(synchronous_commit)
        self.conninfo = conninfo
        self.options = options
        self.synchronous_commit = synchronous_commit
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        _live_pools.add(self)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        kwargs: dict[str, Any] = {
            "autocommit": autocommit,
            "connect_timeout": max(1, int(self.options.connect_timeout)),
            "application_name": "roast-jobs-broker",
        }
        options = libpq_options(self.conninfo, self.synchronous_commit)
        if options:
            kwargs["options"] = options
        conn = psycopg.connect(self.conninfo, **kwargs)
        conn.prepare_threshold = self.options.prepare_threshold
        return conn

    def forget_inherited(self) -> None:
        """In a forked child: drop the parent's idle connections, unused and unclosed."""
        idle, self._idle = self._idle, []
        self._lock = threading.Lock()  # another thread may have held it at fork time
        self._pid = os.getpid()
        for conn in idle:
            disown(conn)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if self._pid != os.getpid():
            # Forked without Python's fork hooks (a C extension's fork()).
            self.forget_inherited()
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


_pools: dict[tuple[str, BrokerOptions, bool], Pool] = {}
_pools_lock = threading.Lock()
# Every pool, including those a Transport created before a fork still points at.
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A lock held by another thread at fork time would stay held in the child.
    global _pools_lock
    _pools_lock = threading.Lock()
    for pool in list(_live_pools):
        pool.forget_inherited()


os.register_at_fork(after_in_child=_reset_after_fork)


def get_pool(conninfo: str, options: BrokerOptions, durable: bool = True) -> Pool:
    """The pool for this process. A forked child empties the ones it inherits, so sockets
    are never shared.

    Publishes use the durable pool (the server's ``synchronous_commit``, or the
    option's). Claims, acks and lease updates use one with ``synchronous_commit=off``:
    if the server crashes before such a commit reaches disk, the message is delivered
    again (at least once), never lost, and no consumer waits for a WAL flush.
    """
    key = (conninfo, options, durable)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            sync = options.synchronous_commit if durable else "off"
            pool = _pools[key] = Pool(conninfo, options, sync)
        return pool


def close_pools(schema: str | None = None) -> int:
    """Close the idle connections of this process's pools (of one broker ``schema``, or
    all) and forget the pools; a transport still using one reconnects on its next use.
    For a process done with a broker: tests that make one per test, a tool switching
    brokers. Returns how many pools went."""
    with _pools_lock:
        keys = [k for k in _pools if schema is None or k[1].schema == schema]
        gone = [_pools.pop(k) for k in keys]
    for pool in gone:
        pool.clear()
    return len(gone)


# Idle sessions end with the process, cleanly (not as "deleted while still open").
atexit.register(close_pools)


def get_listen_pool(conninfo: str, options: BrokerOptions) -> Pool:
    """Where the LISTEN connection comes from: ``listen_url``'s server, or the broker's."""
    if not options.listen_url:
        return get_pool(conninfo, options)
    try:
        libpq, extra = split_url(options.listen_url)
    except ValueError as exc:
        raise ValueError(f"transport option 'listen_url': {exc}") from None
    if extra:
        raise ValueError(
            f"transport option 'listen_url' takes libpq parameters only, not "
            f"{', '.join(sorted(extra))}: set those on the broker URL or its options"
        )
    return get_pool(libpq, options)
