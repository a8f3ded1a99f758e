"""Leases, crash recovery and dead letters, against the real PostgreSQL."""

from __future__ import annotations

import time

import psycopg
from kombu import Connection, Queue

from tests.conftest import broker_url


def publish(conn: Connection, queue: str, body: object) -> None:
    conn.Producer().publish(body, routing_key=queue, declare=[Queue(queue)])


def wait_for(fn, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    return fn()


def test_expired_lease_makes_message_claimable_again(schema: str) -> None:
    url = broker_url(schema, lease_seconds=1)
    crashed = Connection(url)
    survivor = Connection(url)
    try:
        publish(crashed, "work", "job")
        held = crashed.channel().basic_get("work")
        assert held is not None
        other = survivor.channel()
        assert other.basic_get("work") is None, "held under a live lease"
        # The holder never renews nor acks (as if SIGKILLed): the lease runs out.
        again = wait_for(lambda: other.basic_get("work"), timeout=15)
        assert again is not None and again.payload == "job"
        assert again.delivery_info["redelivered"]
        again.ack()
        # A late ack of the first holder: test_broker_acks.py.
        assert other.basic_get("work") is None
    finally:
        survivor.release()
        crashed.release()


def test_renewed_lease_is_never_lost(schema: str) -> None:
    url = broker_url(schema, lease_seconds=1, renew_interval=0.2)
    with Connection(url) as holder, Connection(url) as other:
        publish(holder, "long", "task")
        got: list[object] = []
        # A consumer starts the renewal thread; it holds the message unacked.
        with holder.Consumer(Queue("long"), callbacks=[lambda b, m: got.append(m)]):
            holder.drain_events(timeout=5)
            assert len(got) == 1
            ch = other.channel()
            for _ in range(15):  # 3 s: three lease lengths
                assert ch.basic_get("long") is None
                time.sleep(0.2)
            got[0].ack()


def test_graceful_close_hands_messages_back(schema: str) -> None:
    url = broker_url(schema, lease_seconds=600)
    with Connection(url) as other:
        with Connection(url) as holder:
            publish(holder, "back", "m")
            assert holder.channel().basic_get("back") is not None
        # Closed without ack: back at once, not after the 10-minute lease.
        again = other.channel().basic_get("back")
        assert again is not None
        assert not again.delivery_info["redelivered"], "a hand-back is not a delivery"
        again.ack()


def test_message_delivered_too_often_becomes_dead_letter(schema: str, db) -> None:
    url = broker_url(schema, lease_seconds=0.3, max_deliveries=3)
    conns = [Connection(url) for _ in range(4)]
    try:
        publish(conns[0], "poison", "kills workers")
        for c in conns[:3]:
            held = wait_for(lambda c=c: c.channel().basic_get("poison"))
            assert held is not None
            held.channel.do_restore = False  # dies holding it
        # The fourth claim finds it delivered three times: buried, not delivered.
        time.sleep(0.5)
        assert conns[3].channel().basic_get("poison") is None
        dead = db.execute(
            f"SELECT queue, reason, delivery_count, cardinality(delivered_to) "
            f'FROM "{schema}".dead_letter'
        ).fetchall()
        assert dead == [("poison", "delivered 3 times without an ack", 3, 3)]
        assert db.execute(f'SELECT count(*) FROM "{schema}".message').fetchone()[0] == 0
    finally:
        for c in conns:
            c.release()


def test_garbage_rows_are_buried_and_consumption_goes_on(
    conn: Connection, schema: str, db: psycopg.Connection
) -> None:
    publish(conn, "mixed", "before")
    db.execute(
        f'INSERT INTO "{schema}".message (queue, payload) VALUES '
        "('mixed', 'not json at all'), ('mixed', '[1, 2, 3]'), ('mixed', '{\"body\": 1}')"
    )
    publish(conn, "mixed", "after")
    ch = conn.channel()
    got = []
    while (m := ch.basic_get("mixed")) is not None:
        got.append(m.payload)
        m.ack()
    assert got == ["before", "after"]
    reasons = [r[0] for r in db.execute(f'SELECT reason FROM "{schema}".dead_letter ORDER BY id')]
    assert len(reasons) == 3
    assert reasons[0].startswith("payload is not JSON")
    assert all("not a kombu message" in r for r in reasons[1:])
