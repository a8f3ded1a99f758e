"""Message TTL, queue expiry and the maintenance sweep."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import psycopg
from kombu import Connection, Exchange, Queue

from roast_jobs.broker.connections import Pool, get_pool, split_url
from roast_jobs.broker.maintenance import run_pass
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import statements
from tests.conftest import broker_url
from tests.workers import wait_until


def broker_pool(schema: str) -> Pool:
    conninfo, opts = split_url(broker_url(schema))
    return get_pool(conninfo, BrokerOptions.from_mapping(opts))


def run_sweep(schema: str) -> dict[str, int]:
    """One maintenance pass now; the counts of the steps that concern expiry."""
    report = run_pass(broker_pool(schema), statements(schema))
    assert report is not None
    return {"messages": report["messages_expired"], "queues": report["queues_removed"]}


def expired_in_db(db: psycopg.Connection, schema: str, queue: str) -> bool:
    """True once the database's clock has passed the expiry of the queue's first message."""
    row = db.execute(
        f'SELECT expires_at <= now() FROM "{schema}".message WHERE queue = %s '
        "ORDER BY expires_at LIMIT 1",
        (queue,),
    ).fetchone()
    return bool(row and row[0])


def count(db: psycopg.Connection, schema: str, table: str) -> int:
    return db.execute(f'SELECT count(*) FROM "{schema}".{table}').fetchone()[0]


def test_queue_message_ttl_drops_old_messages(conn: Connection, schema: str, db) -> None:
    q = Queue("ttl", message_ttl=3)
    producer = conn.Producer()
    producer.publish("old-one", routing_key="ttl", declare=[q])
    ttl = db.execute(f'SELECT expires_at - created_at FROM "{schema}".message').fetchone()[0]
    assert ttl == timedelta(seconds=3)
    assert wait_until(lambda: expired_in_db(db, schema, "ttl"), timeout=30)
    producer.publish("fresh", routing_key="ttl", declare=[q])
    ch = conn.channel()
    assert ch.basic_get("ttl", no_ack=True).payload == "fresh"
    assert ch.basic_get("ttl", no_ack=True) is None
    assert run_sweep(schema) == {"messages": 1, "queues": 0}
    assert count(db, schema, "message") == 0
    assert count(db, schema, "dead_letter") == 0, "a plain expired message is just dropped"


def test_celery_expires_header_is_the_workers_business(conn: Connection, schema: str, db) -> None:
    """A task's ``expires`` does not hide it: the worker must receive it to store REVOKED."""
    expires = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    headers = {"task": "app.add", "id": "task-123", "expires": expires}
    conn.Producer().publish("body", routing_key="tasks", declare=[Queue("tasks")], headers=headers)
    got = conn.channel().basic_get("tasks")
    assert got is not None and got.headers == headers
    got.ack()
    assert run_sweep(schema)["messages"] == 0


def test_expired_task_is_kept_as_dead_letter(conn: Connection, schema: str, db) -> None:
    headers = {"task": "app.add", "id": "task-123"}
    producer = conn.Producer()
    producer.publish(
        "body-ttl", routing_key="tasks", declare=[Queue("tasks")], headers=headers, expiration=1
    )
    assert wait_until(lambda: expired_in_db(db, schema, "tasks"), timeout=30)
    assert conn.channel().basic_get("tasks") is None
    run_sweep(schema)
    dead = db.execute(f'SELECT task_id, reason FROM "{schema}".dead_letter').fetchall()
    assert dead == [("task-123", "expired")]


def test_per_message_expiration(conn: Connection, schema: str, db) -> None:
    producer = conn.Producer()
    producer.publish("short", routing_key="pm", declare=[Queue("pm")], expiration=0.2)
    producer.publish("long", routing_key="pm", expiration=60)
    assert wait_until(lambda: expired_in_db(db, schema, "pm"), timeout=30)
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
        unused = f"SELECT last_used + expires < now() FROM \"{schema}\".queue WHERE expires > '0s'"
        assert wait_until(lambda: db.execute(unused).fetchone()[0], timeout=30)
        assert run_sweep(schema) == {"messages": 0, "queues": 1}
        assert count(db, schema, "binding") == 1
        queues = [r[0] for r in db.execute(f'SELECT queue FROM "{schema}".message')]
        assert queues == ["keep"]


def test_consumed_queue_is_kept_alive(schema: str, db) -> None:
    url = broker_url(schema, polling_interval=0.1)
    with Connection(url) as c:
        with c.Consumer(Queue("live", expires=1), callbacks=[lambda b, m: m.ack()]):
            # Consume until the queue would have expired three times over unattended.
            declared = db.execute(f'SELECT now() FROM "{schema}".queue').fetchone()[0]
            while db.execute("SELECT now()").fetchone()[0] < declared + timedelta(seconds=3):
                with contextlib.suppress(TimeoutError):
                    c.drain_events(timeout=0.2)
            run_sweep(schema)
            assert count(db, schema, "queue") == 1


def test_pass_is_skipped_while_recent(conn: Connection, schema: str) -> None:
    pool = broker_pool(schema)
    assert run_pass(pool, statements(schema), interval=3600) is not None
    assert run_pass(pool, statements(schema), interval=3600) is None
