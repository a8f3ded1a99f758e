"""The kombu transport: connection setup, wake-ups, the event loop and leases."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from kombu.transport import virtual

from .channel import Channel
from .connections import CONNECTION_ERRORS, conninfo_from_client, get_pool, mask_url
from .leases import LeaseKeeper
from .listener import Listener, Wakeup
from .maintenance import ensure_schema, sweep
from .options import BrokerOptions
from .sql import statements

logger = logging.getLogger(__name__)

#: Longest an ack made in the event loop waits to ride along with a claim.
ACK_DELAY = 0.05


class Transport(virtual.Transport):
    """Celery/kombu transport for PostgreSQL (psycopg 3). See the package docstring."""

    Channel = Channel

    driver_type = "postgresql"  # not 'sql': Celery would switch events off
    driver_name = "psycopg"
    default_port = 5432
    can_parse_url = True  # we read the URL ourselves: libpq and broker options in its query
    polling_interval = None

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )
    connection_errors = (*virtual.Transport.connection_errors, *CONNECTION_ERRORS)
    channel_errors = (
        *virtual.Transport.channel_errors,
        psycopg.ProgrammingError,
        psycopg.DataError,
        psycopg.IntegrityError,
    )

    channels: list[Channel]

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        conninfo, url_options = conninfo_from_client(client)
        self.options = BrokerOptions.from_mapping(
            {**url_options, **(client.transport_options or {})}
        )
        self.pool = get_pool(conninfo, self.options)
        self.fast_pool = get_pool(conninfo, self.options, durable=False)
        self.sql = statements(self.options.schema)
        self.notify_channel = self.options.schema
        self._pid = os.getpid()
        self._listener: Listener | None = None
        self._hub: Any = None
        self._registered_fd: int | None = None
        self._timers: list[Any] = []
        self._wake_entry: Any = None
        self._next_wake: float | None = None
        self._last_poll = time.monotonic()
        self._last_sweep = 0.0
        self._leases: LeaseKeeper | None = None
        self._flush_entry: Any = None

    # -- connection ------------------------------------------------------------------

    def establish_connection(self) -> Transport:
        ensure_schema(self.pool, self.sql)
        # kombu expects connecting to fail while the server is down: check, even when the
        # schema is known and idle connections are pooled.
        with self.fast_pool.connection() as conn:
            conn.execute(self.sql.ping)
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        if os.getpid() != self._pid:
            # Inherited by a forked child: the sockets, the event loop and the leases
            # belong to the parent. Touch nothing.
            self.channels = []
            self._avail_channels = []
            return
        if self._leases is not None:
            self._leases.stop()
            self._leases = None
        self._unregister()
        for channel in list(self.channels):
            channel.flush_acks()
        super().close_connection(connection)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        return uri if include_password else mask_url(uri, mask)

    def driver_version(self) -> str:
        return psycopg.__version__

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"port": self.default_port, "hostname": "localhost"}

    # -- consumers -------------------------------------------------------------------

    def consuming(self) -> Iterable[Channel]:
        return [c for c in self.channels if not c.closed and c._consumers]

    def on_consume(self, channel: Channel) -> None:
        """A channel started consuming: make sure wake-ups and lease renewal run."""
        if self._leases is None or not self._leases.is_alive():
            self._leases = LeaseKeeper(lambda: list(self.channels), self.options.renew_every)
            self._leases.start()
        if self._hub is not None:
            self._register_listener()

    def _listen(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self.pool, self.sql.listen)
        self._listener.connect()
        return self._listener

    def _mark(self, queue: str | None = None) -> None:
        for channel in self.consuming():
            if queue is None or queue in channel._active_queues:
                channel.maybe_more = True

    def _on_wakeups(self, wakeups: list[Wakeup]) -> None:
        now = time.time()
        for w in wakeups:
            if w.due is not None and w.due > now + 0.001:
                self._schedule_wake(w.due)
            else:
                self._mark(w.queue)

    def _defer_flush(self) -> bool:
        """Arrange a flush of pending acks soon; False if there is no loop to do it."""
        if self._hub is None:
            return False
        if self._flush_entry is None:
            self._flush_entry = self._hub.call_later(ACK_DELAY, self._flush_acks_now)
        return True

    def _flush_acks_now(self) -> None:
        self._flush_entry = None
        for channel in self.consuming():
            channel.flush_acks()

    @property
    def defer_acks(self) -> bool:
        # Only inside the worker's event loop, which flushes them on every tick.
        return self._hub is not None

    def _service(self) -> int:
        """Claim and deliver for every channel that may have work and has room."""
        delivered = 0
        for channel in self.consuming():
            room = channel.capacity() if channel.maybe_more else 0
            if room < channel.batch_threshold():
                # Under a backlog, wait for room for a batch; the acks made meanwhile go
                # with that claim, or with a flush at most ACK_DELAY later.
                if channel.has_pending_acks() and (room <= 0 or not self._defer_flush()):
                    channel.flush_acks()
                continue
            got, claimed = channel.claim(channel._active_queues, room)
            channel.maybe_more = claimed >= room
            delivered += self._deliver_all(channel, got)
        return delivered

    def _deliver_all(self, channel: Channel, got: list[tuple[str, dict[str, Any]]]) -> int:
        for i, (queue, raw) in enumerate(got):
            callback = self._callbacks.get(queue)
            try:
                if callback is None:
                    raise LookupError(f"no consumer for queue {queue!r}")
                callback(raw)
            except BaseException:
                # Hand back what was claimed but not delivered, then let the error out.
                rest = [
                    r["properties"]["delivery_tag"]
                    for q, r in got[i + (callback is not None) :]
                    if q not in channel._noack_queues
                ]
                if rest:
                    channel.release(rest)
                raise
        return len(got)

    # -- timers: delays, expired leases, the safety poll -----------------------------

    def _schedule_wake(self, due: float) -> None:
        if self._next_wake is not None and self._next_wake <= due + 0.001:
            return
        self._next_wake = due
        if self._hub is not None:
            if self._wake_entry is not None:
                self._wake_entry.cancel()
            self._wake_entry = self._hub.call_later(
                max(0.0, due - time.time()) + 0.002, self._on_wake
            )

    def _on_wake(self) -> None:
        self._next_wake = None
        self._wake_entry = None
        self._mark()
        self._service()
        self._refresh_next_due()

    def _refresh_next_due(self) -> None:
        dues = [d for d in (c.next_due() for c in self.consuming()) if d is not None]
        if dues:
            self._schedule_wake(min(dues))

    def _on_poll(self) -> None:
        self._housekeeping()
        self._service()

    def _housekeeping(self) -> None:
        """Safety net: lost notifications, expired leases, sweeping."""
        self._last_poll = time.monotonic()
        self._mark()
        now = time.monotonic()
        if now - self._last_sweep >= self.options.maintenance_interval:
            self._last_sweep = now
            sweep(self.pool, self.sql, self.options.maintenance_interval)
        self._refresh_next_due()

    # -- the event loop (celery worker) ----------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self._unregister()
        self._hub = loop
        self._timers = [loop.call_repeatedly(self.options.polling_interval, self._on_poll)]
        loop.on_tick.add(self._on_tick)
        self._register_listener()

    def _register_listener(self) -> None:
        hub = self._hub
        listener = self._listen()
        fd = listener.fileno()
        if fd != self._registered_fd:
            if self._registered_fd is not None:
                hub.remove_reader(self._registered_fd)
            hub.add_reader(fd, self._on_readable)
            self._registered_fd = fd

    def _unregister(self) -> None:
        hub, self._hub = self._hub, None
        for entry in self._timers:
            entry.cancel()
        self._timers = []
        for entry in (self._wake_entry, self._flush_entry):
            if entry is not None:
                entry.cancel()
        self._wake_entry = self._flush_entry = None
        self._next_wake = None
        if hub is None:
            return
        hub.on_tick.discard(self._on_tick)
        if self._registered_fd is not None:
            hub.remove_reader(self._registered_fd)
            self._registered_fd = None

    def _on_tick(self) -> None:
        if self._listener is None or not self._listener.connected:
            # Lost with the server: reconnect (raising a connection error if it is still
            # down, which makes Celery reconnect) and assume notifications were missed.
            self._registered_fd = None
            self._register_listener()
            self._mark()
        self._service()

    def _on_readable(self) -> None:
        assert self._listener is not None
        try:
            wakeups = self._listener.drain()
        except CONNECTION_ERRORS:
            if self._hub is not None and self._registered_fd is not None:
                self._hub.remove_reader(self._registered_fd)
            self._registered_fd = None
            raise
        self._on_wakeups(wakeups)
        self._service()

    # -- blocking consumption (kombu Connection.drain_events) -------------------------

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver at least one message, waiting on LISTEN up to ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._listen()
        while True:
            if self._next_wake is not None and self._next_wake <= time.time():
                self._next_wake = None
                self._mark()
                if self._service():
                    return
                self._refresh_next_due()
            elif self._service():
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise TimeoutError()
            since_poll = now - self._last_poll
            wait = max(0.0, self.options.polling_interval - since_poll)
            if deadline is not None:
                wait = min(wait, deadline - now)
            if self._next_wake is not None:
                wait = min(wait, max(0.0, self._next_wake - time.time()))
            wakeups = listener.wait(wait)
            if wakeups:
                self._on_wakeups(wakeups)
            elif time.monotonic() - self._last_poll >= self.options.polling_interval:
                self._housekeeping()
