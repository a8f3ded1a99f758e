"""AMQP queue semantics of the transport, against the real PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from kombu import Connection, Exchange, Queue

from tests.conftest import broker_url


def rows(db: psycopg.Connection, schema: str, table: str = "message") -> int:
    return db.execute(f'SELECT count(*) FROM "{schema}".{table}').fetchone()[0]


def publish(conn: Connection, queue: str, body: object, **kwargs: object) -> None:
    q = Queue(queue)
    conn.Producer().publish(body, routing_key=queue, declare=[q], **kwargs)


def drain_until(conn: Connection, got: list, count: int = 1, timeout: float = 60.0) -> None:
    """Drain until ``got`` holds ``count`` items. ``timeout`` only bounds the wait for an
    outcome that must come: it is generous, and it is not what the test asserts."""
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=1)


def test_publish_consume_ack_deletes_row(conn: Connection, schema: str, db) -> None:
    q = Queue("q1")
    publish(conn, "q1", {"n": 1})
    assert rows(db, schema) == 1
    got: list[object] = []

    def on_message(body: object, message) -> None:
        got.append(body)
        message.ack()

    with conn.Consumer(q, callbacks=[on_message]):
        drain_until(conn, got)
    assert got == [{"n": 1}]
    assert rows(db, schema) == 0, "an acked message leaves no row behind"


def test_basic_get_reject_requeue_redelivers(conn: Connection, schema: str, db) -> None:
    publish(conn, "q2", "hello")
    channel = conn.channel()
    first = channel.basic_get("q2")
    assert first is not None and first.payload == "hello"
    assert not first.delivery_info["redelivered"]
    assert channel.basic_get("q2") is None, "a leased message is not handed out twice"
    first.reject(requeue=True)
    again = channel.basic_get("q2")
    assert again is not None and again.payload == "hello"
    assert again.delivery_info["redelivered"]
    again.ack()
    assert rows(db, schema) == 0


def test_reject_without_requeue_is_dead_lettered(conn: Connection, schema: str, db) -> None:
    publish(conn, "q3", "bad")
    channel = conn.channel()
    message = channel.basic_get("q3")
    message.reject(requeue=False)
    assert rows(db, schema) == 0
    reason = db.execute(f'SELECT reason, queue FROM "{schema}".dead_letter').fetchall()
    assert reason == [("rejected", "q3")]


def test_size_purge_and_delete(conn: Connection, schema: str, db) -> None:
    for i in range(5):
        publish(conn, "q4", i)
    channel = conn.channel()
    assert Queue("q4", channel=channel).queue_declare().message_count == 5
    held = channel.basic_get("q4")  # leased: neither counted as ready nor purged
    assert channel.queue_purge("q4") == 4
    assert rows(db, schema) == 1
    held.ack()
    publish(conn, "q4", "x")
    channel.queue_delete("q4")
    assert rows(db, schema) == 0
    assert rows(db, schema, "queue") == 0


def test_priority_higher_first_fifo_within(conn: Connection, schema: str) -> None:
    order = [(0, "a"), (5, "b"), (9, "c"), (5, "d"), (0, "e"), (9, "f"), (12, "g"), (-3, "h")]
    for priority, label in order:
        publish(conn, "prio", label, priority=priority)
    channel = conn.channel()
    seen = []
    while (m := channel.basic_get("prio", no_ack=True)) is not None:
        seen.append(m.payload)
    # 12 clamps to 9 and -3 to 0; FIFO inside each priority.
    assert seen == ["c", "f", "g", "b", "d", "a", "e", "h"]


def test_delayed_message_waits_in_the_table(conn: Connection, schema: str) -> None:
    eta = datetime.now(UTC) + timedelta(seconds=1.5)
    publish(conn, "later", "x", headers={"eta": eta.isoformat()})
    publish(conn, "later", "now")
    channel = conn.channel()
    first = channel.basic_get("later", no_ack=True)
    assert first is not None and first.payload == "now"
    assert channel.basic_get("later", no_ack=True) is None, "not visible before its eta"
    got: list[tuple[object, datetime]] = []
    with conn.Consumer(
        Queue("later"),
        callbacks=[lambda body, m: (got.append((body, datetime.now(UTC))), m.ack())],
    ):
        drain_until(conn, got)
    assert [body for body, _ in got] == ["x"]
    # Delivered, and not before its eta (a lower bound: a slow machine only adds to it).
    assert got[0][1] >= eta - timedelta(milliseconds=50)


def test_notify_wakes_a_blocked_consumer(schema: str) -> None:
    # The safety poll is an hour away: only LISTEN/NOTIFY can make the consumer look again.
    url = broker_url(schema, polling_interval=3600)
    got: list[object] = []
    with (
        Connection(url) as consumer,
        Connection(url) as producer,
        consumer.Consumer(Queue("wake"), callbacks=[lambda body, m: (got.append(body), m.ack())]),
    ):
        # First the consumer listens, claims, finds the queue empty and waits: after this
        # it claims again only when woken.
        with pytest.raises(TimeoutError):
            consumer.drain_events(timeout=0.5)
        publish(producer, "wake", "ping")
        # The wait is generous and not the check: a consumer that nobody woke would wait
        # for the poll, an hour away, and fail here.
        consumer.drain_events(timeout=120)
    assert got == ["ping"]


def test_drain_events_times_out_when_empty(conn: Connection) -> None:
    with conn.Consumer(Queue("empty"), callbacks=[lambda b, m: m.ack()]):
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.3)


def test_no_message_is_claimed_twice(schema: str, db) -> None:
    url = broker_url(schema)
    with Connection(url) as producer:
        channel = producer.channel()
        Queue("race", channel=channel).declare()
        for i in range(600):
            channel.basic_publish(channel.prepare_message(str(i)), "", "race")
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        with Connection(url) as c:
            ch = c.channel()
            while (m := ch.basic_get("race")) is not None:
                with lock:
                    seen.append(m.body.decode() if isinstance(m.body, bytes) else m.body)
                m.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(seen, key=int) == [str(i) for i in range(600)]
    assert rows(db, schema) == 0


def test_fanout_and_topic_routes_cross_processes(schema: str) -> None:
    url = broker_url(schema)
    fan = Exchange("fan", "fanout")
    topic = Exchange("tx", "topic")
    with Connection(url) as a, Connection(url) as b, Connection(url) as producer:
        # Bindings declared through two other connections...
        Queue("fan-a", fan, channel=a.channel()).declare()
        Queue("fan-b", fan, channel=b.channel()).declare()
        Queue("t-all", topic, routing_key="task.#", channel=a.channel()).declare()
        Queue("t-one", topic, routing_key="task.*.done", channel=b.channel()).declare()
        # ...route a publish from a third, which never declared them.
        p = producer.Producer()
        p.publish("f", exchange=fan, routing_key="ignored")
        p.publish("t1", exchange=topic, routing_key="task.x.done")
        p.publish("t2", exchange=topic, routing_key="task.x.y.done")
        p.publish("t3", exchange=topic, routing_key="other.x.done")
        ch = producer.channel()

        def drain(queue: str) -> list[object]:
            out = []
            while (m := ch.basic_get(queue, no_ack=True)) is not None:
                out.append(m.payload)
            return out

        assert drain("fan-a") == ["f"]
        assert drain("fan-b") == ["f"]
        assert drain("t-all") == ["t1", "t2"]
        assert drain("t-one") == ["t1"]


def test_unbind_and_queue_delete_remove_routes(schema: str, db) -> None:
    url = broker_url(schema)
    ex = Exchange("d", "direct")
    with Connection(url) as c:
        q = Queue("dq", ex, routing_key="k", channel=c.channel())
        q.declare()
        assert rows(db, schema, "binding") == 1
        q.unbind_from(ex, routing_key="k")
        assert rows(db, schema, "binding") == 0
        q.declare()
        q.delete()
        assert rows(db, schema, "binding") == 0
        assert rows(db, schema, "queue") == 0
