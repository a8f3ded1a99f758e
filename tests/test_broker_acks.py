"""Acks name one delivery and are never dropped, against the real PostgreSQL.

The worker's event loop defers acks (they ride with the next claim); these tests run the
transport in a real kombu Hub, as ``celery worker`` does, and break its connections for
real (``pg_terminate_backend``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kombu import Connection, Queue
from kombu.asynchronous import Hub

from tests.conftest import broker_url
from tests.workers import wait_until


def publish(conn: Connection, queue: str, body: object, **kwargs: Any) -> None:
    conn.Producer().publish(body, routing_key=queue, declare=[Queue(queue)], **kwargs)


def rows(db: psycopg.Connection, schema: str, queue: str) -> list[tuple[Any, ...]]:
    return db.execute(
        f'SELECT id, lease_owner FROM "{schema}".message WHERE queue = %s ORDER BY id',
        (queue,),
    ).fetchall()


@pytest.fixture
def looped(schema: str) -> Iterator[tuple[Connection, Hub]]:
    """A connection whose transport runs in a kombu Hub: acks are deferred."""
    import roast_jobs  # noqa: F401

    conn = Connection(broker_url(schema, lease_seconds=2, renew_interval=30))
    conn.connect()
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    try:
        yield conn, hub
    finally:
        conn.transport._unregister()
        conn.release()
        hub.close()


def kill_idle_connections(pool: Any, db: psycopg.Connection) -> int:
    """Terminate the server side of every idle connection of ``pool``."""
    pids = [c.info.backend_pid for c in pool._idle]
    for pid in pids:
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return len(pids)


def test_stale_ack_cannot_remove_a_later_delivery(schema: str, db: psycopg.Connection) -> None:
    url = broker_url(schema, lease_seconds=1)
    with Connection(url) as crashed, Connection(url) as survivor:
        publish(crashed, "work", "job")
        held = crashed.channel().basic_get("work")
        assert held is not None
        other = survivor.channel()
        assert other.basic_get("work") is None, "held under a live lease"
        again = wait_until(lambda: other.basic_get("work"), timeout=15)
        assert again is not None and again.delivery_info["redelivered"]
        # The first holder wakes up and acks first: it no longer holds the message.
        held.ack()
        assert len(rows(db, schema, "work")) == 1, "a stale ack removed the new delivery"
        again.ack()
        assert rows(db, schema, "work") == []


def test_retry_replacing_a_held_row_survives_the_first_deliverys_ack(
    schema: str, db: psycopg.Connection
) -> None:
    """A Celery retry of a singleton job overwrites the held row; the same channel may
    claim the retry before it acks the first delivery."""
    headers = {"task": "app.t", "id": "job-1", "retries": 0, "singleton_key": "k"}
    with Connection(broker_url(schema)) as conn:
        channel = conn.channel()
        publish(conn, "single", "try-1", headers=headers)
        first = channel.basic_get("single")
        assert first is not None
        publish(conn, "single", "try-2", headers={**headers, "retries": 1})
        retry = channel.basic_get("single")
        assert retry is not None and retry.payload == "try-2"
        first.ack()
        assert len(rows(db, schema, "single")) == 1, "the late ack deleted the retry"
        # The key is still held by the retry: a second job with it is dropped.
        publish(conn, "single", "other", headers={**headers, "id": "job-2"})
        assert len(rows(db, schema, "single")) == 1
        retry.ack()
        assert rows(db, schema, "single") == []


def test_ack_survives_a_failed_claim(
    looped: tuple[Connection, Hub], schema: str, db: psycopg.Connection
) -> None:
    conn, _hub = looped
    transport = conn.transport
    publish(conn, "acks", "one")
    channel = conn.channel()
    message = channel.basic_get("acks")
    assert message is not None
    message.ack()  # deferred: waits for the next claim
    assert len(rows(db, schema, "acks")) == 1
    assert kill_idle_connections(transport.fast_pool, db) >= 1
    with pytest.raises(psycopg.OperationalError):
        channel.claim(["acks"], 1)  # the claim carrying the ack dies with its backend
    channel.claim(["acks"], 1)  # reconnects; the ack must still ride along
    assert rows(db, schema, "acks") == [], "the ack was dropped with the failed claim"


def test_acks_of_a_channel_that_stopped_consuming_are_flushed(
    looped: tuple[Connection, Hub], schema: str, db: psycopg.Connection
) -> None:
    conn, hub = looped
    transport = conn.transport
    publish(conn, "cancelled", "one")
    got: list[Any] = []
    channel = conn.channel()
    channel.basic_consume("cancelled", False, lambda m: got.append(m), "ctag")
    assert wait_until(lambda: transport._service() or got, timeout=10)
    [message] = got
    # ``celery control cancel_consumer`` while the task runs; the task then finishes.
    channel.basic_cancel("ctag")
    message.ack()
    # The worker's loop goes on: ticks and timers, as the hub would run them.
    deadline = time.monotonic() + 10
    while rows(db, schema, "cancelled") and time.monotonic() < deadline:
        transport._on_tick()
        hub.fire_timers()
        time.sleep(0.05)
    assert rows(db, schema, "cancelled") == [], "the ack was never flushed"


def test_a_delivery_made_in_a_tick_wakes_the_loop_before_it_blocks(
    looped: tuple[Connection, Hub], schema: str
) -> None:
    """Celery's prefork pool hands a delivered task to an idle child from its own tick
    callback, which may already have run in this round (the hub keeps tick callbacks in
    a set). A delivery made in our tick must leave the loop something to wake on, or the
    task waits in the pool for the next timer while a child is idle."""
    conn, hub = looped
    transport = conn.transport
    got: list[Any] = []
    channel = conn.channel()
    channel.basic_consume("ticked", False, lambda m: got.append(m), "ctag")
    publish(conn, "ticked", "one")
    transport._listen().drain()  # the publish's notification: not what we test
    assert not [e for e in hub.poller.poll(0) or ()], "something else is ready"
    transport._on_tick()
    assert len(got) == 1
    ready = hub.poller.poll(0) or ()
    assert ready, "the loop would block with a delivered task waiting for the pool"


def test_two_statements_never_carry_the_same_ack() -> None:
    """Concurrent claims of one process each take a disjoint share of the outbox: two
    deletes of the same rows in different orders deadlocked (seen in
    test_no_message_is_claimed_twice: DeadlockDetected "while deleting tuple")."""
    from roast_jobs.broker.acks import AckOutbox

    box = AckOutbox()
    box.add("1:a")
    box.add("2:b")
    first = box.take()
    assert first == ["1:a", "2:b"]
    box.add("3:c")
    assert box.take() == ["3:c"], "a second statement got acks the first one carries"
    assert box.pending() == ["1:a", "2:b", "3:c"]  # all still renewed until durable
    box.release(first)  # the first statement failed: they go with the next one
    assert box.take() == ["1:a", "2:b"]
    box.done(["1:a", "2:b", "3:c"])
    assert box.pending() == [] and box.take() == []
