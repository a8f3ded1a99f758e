"""The maintenance pass: one pass, one lock, short steps that cannot hang."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kombu import Connection, Queue

from roast_jobs.broker.connections import get_pool, split_url
from roast_jobs.broker.maintenance import run_pass
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import statements
from roast_jobs.jobs import JobManager, run_maintenance
from tests.apps import jobs_app
from tests.conftest import BROKER_SCHEMA, DATABASE_URL, broker_url
from tests.workers import wait_until

S = f'"{BROKER_SCHEMA}"'


@pytest.fixture(scope="module")
def jm() -> Iterator[JobManager]:
    with JobManager(jobs_app.app) as manager:
        yield manager


def pool_of(schema: str) -> Any:
    conninfo, opts = split_url(broker_url(schema))
    return get_pool(conninfo, BrokerOptions.from_mapping(opts))


def ours_stuck(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    """Sessions of this database that are idle in a transaction or waiting on a lock."""
    return db.execute(
        "SELECT pid, state, wait_event_type FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND (state = 'idle in transaction' OR wait_event_type = 'Lock') "
        "AND query ILIKE %s",
        (f"%{BROKER_SCHEMA}%",),
    ).fetchall()


def test_pass_over_an_expired_message_whose_lease_ran_out_finishes(
    jm: JobManager, db: psycopg.Connection
) -> None:
    """Reclaiming the lease and sweeping the expiry touch the same row: the pass must not
    wait on itself."""
    queue = "maint-deadlock"
    holder = Connection(broker_url(BROKER_SCHEMA, lease_seconds=1))
    holder.Producer().publish("x", routing_key=queue, declare=[Queue(queue)], expiration=1)
    assert holder.channel().basic_get(queue) is not None
    # The holder stops renewing without acking or handing back (as if SIGKILLed): the
    # lease and the expiry both pass.
    lapsed = (
        f"SELECT count(*) FROM {S}.message WHERE queue = %s AND lease_owner IS NOT NULL "
        "AND visible_at < now() AND expires_at < now()"
    )
    assert wait_until(lambda: db.execute(lapsed, (queue,)).fetchone()[0] == 1, timeout=30)
    done: list[Any] = []
    runner = threading.Thread(
        target=lambda: done.append(run_maintenance(jobs_app.app, link=jm.link)), daemon=True
    )
    runner.start()
    runner.join(timeout=60)
    hung = runner.is_alive()
    if hung:  # free the cluster for the other tests before failing
        for pid, *_ in ours_stuck(db):
            db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    holder.release()
    assert not hung, "the maintenance pass deadlocked with itself"
    assert done and done[0] is not None and done[0].messages_expired >= 1
    assert (
        db.execute(f"SELECT count(*) FROM {S}.message WHERE queue = %s", (queue,)).fetchone()[0]
        == 0
    )
    assert ours_stuck(db) == []


def test_one_lock_for_the_broker_and_the_job_passes(jm: JobManager) -> None:
    sql = statements(BROKER_SCHEMA)
    with psycopg.connect(DATABASE_URL, autocommit=True) as holder:
        assert holder.execute(sql.maintenance_lock, {"schema": BROKER_SCHEMA}).fetchone()[0]
        assert run_pass(jm.link.transport.pool, sql) is None
        assert run_maintenance(jobs_app.app, link=jm.link) is None
        holder.execute(sql.maintenance_unlock, {"schema": BROKER_SCHEMA})
    assert run_pass(jm.link.transport.pool, sql) is not None


def test_a_step_that_cannot_get_its_locks_gives_up_and_the_pass_goes_on(
    schema: str, db: psycopg.Connection
) -> None:
    with Connection(broker_url(schema)) as conn:
        conn.Producer().publish("x", routing_key="q", declare=[Queue("q")], expiration=1)
    sql = statements(schema)
    pool = pool_of(schema)
    expired = f'SELECT id FROM "{schema}".message WHERE expires_at < now()'
    assert wait_until(lambda: db.execute(expired).fetchone(), timeout=30)
    with psycopg.connect(DATABASE_URL) as blocker:
        # Another transaction holds the expired row (and stays open).
        blocker.execute(f'SELECT 1 FROM "{schema}".message FOR UPDATE')
        report = run_pass(pool, sql)
        assert report is not None and report["messages_expired"] == 0
        blocker.rollback()
    report = run_pass(pool, sql)
    assert report is not None and report["messages_expired"] == 1
    last = db.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'maintenance'").fetchone()
    assert last is not None and '"messages_expired": 1' in last[0]
