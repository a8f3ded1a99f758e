"""Message TTL, queue expiry and the maintenance sweep."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta

import psycopg
from kombu import Connection, Exchange, Queue

from roast_jobs.broker.connections import get_pool, split_url
from roast_jobs.broker.maintenance import sweep
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import statements
from tests.conftest import broker_url


def run_sweep(schema: str) -> dict[str, int] | None:
    url = broker_url(schema)
    conninfo, opts = split_url(url)
    pool = get_pool(conninfo, BrokerOptions.from_mapping(opts))
    return sweep(pool, statements(schema), interval=0)


def count(db: psycopg.Connection, schema: str, table: str) -> int:
    return db.execute(f'SELECT count(*) FROM "{schema}".{table}').fetchone()[0]


def test_queue_message_ttl_drops_old_messages(conn: Connection, schema: str, db) -> None:
    q = Queue("ttl", message_ttl=0.3)
    producer = conn.Producer()
    producer.publish("old", routing_key="ttl", declare=[q])
    time.sleep(0.5)
    producer.publish("fresh", routing_key="ttl", declare=[q])
    ch = conn.channel()
    assert ch.basic_get("ttl", no_ack=True).payload == "fresh"
    assert ch.basic_get("ttl", no_ack=True) is None
    assert run_sweep(schema) == {"messages": 1, "queues": 0}
    assert count(db, schema, "message") == 0
    assert count(db, schema, "dead_letter") == 0, "a plain expired message is just dropped"


def test_expired_task_is_kept_as_dead_letter(conn: Connection, schema: str, db) -> None:
    expires = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    conn.Producer().publish(
        "body",
        routing_key="tasks",
        declare=[Queue("tasks")],
        headers={"task": "app.add", "id": "task-123", "expires": expires},
    )
    assert conn.channel().basic_get("tasks") is None
    run_sweep(schema)
    dead = db.execute(f'SELECT task_id, reason FROM "{schema}".dead_letter').fetchall()
    assert dead == [("task-123", "expired")]


def test_per_message_expiration(conn: Connection, schema: str) -> None:
    producer = conn.Producer()
    producer.publish("short", routing_key="pm", declare=[Queue("pm")], expiration=0.2)
    producer.publish("long", routing_key="pm", expiration=60)
    time.sleep(0.4)
    ch = conn.channel()
    assert ch.basic_get("pm", no_ack=True).payload == "long"
    assert ch.basic_get("pm", no_ack=True) is None


def test_unused_queue_expires_with_its_messages_and_bindings(schema: str, db) -> None:
    ex = Exchange("ev", "topic")
    with Connection(broker_url(schema)) as c:
        producer = c.Producer()
        # Like a Flower that died: an event queue with x-expires, still bound.
        Queue("dead-flower", ex, routing_key="#", expires=0.5, channel=c.channel()).declare()
        Queue("keep", ex, routing_key="#", channel=c.channel()).declare()
        producer.publish("event", exchange=ex, routing_key="task.succeeded")
        time.sleep(0.8)
        assert run_sweep(schema) == {"messages": 0, "queues": 1}
        assert count(db, schema, "binding") == 1
        queues = [r[0] for r in db.execute(f'SELECT queue FROM "{schema}".message')]
        assert queues == ["keep"]


def test_consumed_queue_is_kept_alive(schema: str, db) -> None:
    url = broker_url(schema, polling_interval=0.1)
    with Connection(url) as c:
        with c.Consumer(Queue("live", expires=0.5), callbacks=[lambda b, m: m.ack()]):
            for _ in range(8):  # 1.6 s of consuming, polls touch the queue
                with contextlib.suppress(TimeoutError):
                    c.drain_events(timeout=0.2)
            run_sweep(schema)
            assert count(db, schema, "queue") == 1


def test_sweep_is_skipped_while_recent(conn: Connection, schema: str) -> None:
    url = broker_url(schema)
    conninfo, opts = split_url(url)
    pool = get_pool(conninfo, BrokerOptions.from_mapping(opts))
    assert sweep(pool, statements(schema), interval=3600) is not None
    assert sweep(pool, statements(schema), interval=3600) is None
