"""What a consumer receives: exactly what was sent, no matter what else is in the table."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from kombu import Connection, Consumer, Queue

from roast_jobs.broker.channel import Channel
from tests.conftest import broker_url


def test_headers_body_and_properties_arrive_as_sent(conn: Connection) -> None:
    conn.Producer().publish(
        {"x": [1, 2]},
        routing_key="exact",
        declare=[Queue("exact")],
        headers={"k1": "v1", "nested": {"a": 1}},
        serializer="json",
        correlation_id="c-1",
        reply_to="somewhere",
    )
    message = conn.channel().basic_get("exact")
    assert message is not None
    assert message.headers == {"k1": "v1", "nested": {"a": 1}}
    assert message.payload == {"x": [1, 2]}
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert message.properties["correlation_id"] == "c-1"
    assert message.properties["reply_to"] == "somewhere"
    # The broker's own facts go in delivery_info, never into the sender's headers.
    assert isinstance(message.delivery_info.get("sent_at"), float)


def make_poison(db: psycopg.Connection, schema: str, queue: str) -> None:
    """The oldest message of ``queue`` has been delivered too often without an ack."""
    db.execute(
        f'UPDATE "{schema}".message SET delivery_count = 99 WHERE id = '
        f'(SELECT min(id) FROM "{schema}".message WHERE queue = %s)',
        (queue,),
    )


def test_basic_get_skips_a_poison_row_to_the_good_message(
    schema: str, db: psycopg.Connection
) -> None:
    with Connection(broker_url(schema, max_deliveries=3)) as conn:
        producer = conn.Producer()
        producer.publish("poison", routing_key="pg", declare=[Queue("pg")])
        producer.publish("good", routing_key="pg")
        make_poison(db, schema, "pg")
        message = conn.channel().basic_get("pg")
        assert message is not None and message.payload == "good"
        dead = db.execute(f'SELECT reason FROM "{schema}".dead_letter').fetchall()
        assert dead == [("delivered 99 times without an ack",)]


def test_consumer_goes_on_past_a_poison_row_without_waiting_for_a_poll(
    schema: str, db: psycopg.Connection
) -> None:
    # No safety-net poll within the test: only "maybe more" can bring the good one.
    url = broker_url(schema, max_deliveries=3, polling_interval=3600)
    with Connection(url) as conn:
        producer = conn.Producer()
        producer.publish("poison", routing_key="pc", declare=[Queue("pc")])
        producer.publish("good", routing_key="pc")
        make_poison(db, schema, "pc")
        got: list[Any] = []
        with Consumer(conn, [Queue("pc")], callbacks=[lambda b, m: got.append(b)]) as c:
            c.qos(prefetch_count=1)
            conn.drain_events(timeout=30)
        assert got == ["good"]


def test_a_host_clock_ahead_of_the_database_does_not_make_consumers_spin(
    schema: str, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Due times are the database's; this host's wall clock runs 5 s ahead of it."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 5.0)
    claims = 0
    real_claim = Channel.claim

    def counting_claim(self: Channel, *args: Any, **kwargs: Any) -> Any:
        nonlocal claims
        claims += 1
        return real_claim(self, *args, **kwargs)

    monkeypatch.setattr(Channel, "claim", counting_claim)
    eta = db.execute("SELECT (now() + interval '2 seconds')::text").fetchone()[0]
    with Connection(broker_url(schema, polling_interval=1)) as conn:
        conn.Producer().publish(
            "later",
            routing_key="skew",
            declare=[Queue("skew")],
            headers={"task": "t", "id": "skewed", "eta": eta.replace(" ", "T")},
        )
        got: list[Any] = []
        with Consumer(conn, [Queue("skew")], callbacks=[lambda b, m: got.append(b)]):
            while not got:
                conn.drain_events(timeout=30)
    assert got == ["later"]
    # A wake-up per poll or notification; thousands when the clocks are compared.
    assert claims < 30, f"{claims} claims to deliver one delayed message"
