"""auto_delete queues go with their last consumer, in any process, as on RabbitMQ."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import psycopg
from kombu import Connection, Consumer, Queue

from roast_jobs.broker.connections import get_pool, split_url
from roast_jobs.broker.maintenance import run_pass
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import statements
from tests.conftest import broker_url
from tests.workers import REPO, wait_until


def count(db: psycopg.Connection, schema: str, sql: str, *args: Any) -> int:
    return db.execute(sql.replace("{s}", f'"{schema}"'), args).fetchone()[0]


def messages(db: psycopg.Connection, schema: str, queue: str) -> int:
    return count(db, schema, "SELECT count(*) FROM {s}.message WHERE queue = %s", queue)


def queue_exists(db: psycopg.Connection, schema: str, queue: str) -> bool:
    return bool(count(db, schema, "SELECT count(*) FROM {s}.queue WHERE name = %s", queue))


def test_queue_stays_while_another_consumer_remains(schema: str, db: psycopg.Connection) -> None:
    url = broker_url(schema)
    q = Queue("shared-ad", auto_delete=True)
    with Connection(url) as a, Connection(url) as b:
        got: dict[str, list[Any]] = {"a": [], "b": []}
        ca = Consumer(a, [q], callbacks=[lambda body, m: got["a"].append(m)], prefetch_count=1)
        cb = Consumer(b, [q], callbacks=[lambda body, m: got["b"].append(m)], prefetch_count=1)
        ca.consume()
        cb.consume()
        producer = a.Producer()
        for i in range(4):
            producer.publish(f"m{i}", routing_key="shared-ad")
        a.drain_events(timeout=10)
        b.drain_events(timeout=10)
        assert len(got["a"]) == 1 and len(got["b"]) == 1
        ca.cancel()  # one consumer goes: the queue must stay for the other
        assert queue_exists(db, schema, "shared-ad")
        assert messages(db, schema, "shared-ad") == 4 - 1 + 1  # a's went back, b's is held
        got["b"][0].ack()
        b.drain_events(timeout=10)
        assert len(got["b"]) == 2
        got["b"][1].ack()
        cb.cancel()  # the last consumer goes: so does the queue, with its messages
        assert not queue_exists(db, schema, "shared-ad")
        assert messages(db, schema, "shared-ad") == 0


CONSUMER = textwrap.dedent(
    """
    import sys
    import roast_jobs
    from kombu import Connection, Consumer, Queue

    with Connection(sys.argv[1]) as conn:
        consumer = Consumer(conn, [Queue("orphan-ad", auto_delete=True)], callbacks=[])
        consumer.consume()
        print("consuming", flush=True)
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    """
)


def test_queue_goes_when_its_last_consumers_process_dies(
    schema: str, db: psycopg.Connection
) -> None:
    url = broker_url(schema, lease_seconds=1)
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, url], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "consuming"
        conninfo, opts = split_url(url)
        pool = get_pool(conninfo, BrokerOptions.from_mapping(opts))
        sql = statements(schema)
        # Alive, it keeps its registration fresh: passes leave the queue alone.
        run_pass(pool, sql)
        assert queue_exists(db, schema, "orphan-ad")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        lapsed = "SELECT count(*) FROM {s}.consumer WHERE alive_until > now()"
        assert wait_until(lambda: count(db, schema, lapsed) == 0, timeout=30)
        report = run_pass(pool, sql)
        assert report is not None and report["queues_removed"] == 1
        assert not queue_exists(db, schema, "orphan-ad")
    finally:
        if proc.poll() is None:
            proc.kill()
