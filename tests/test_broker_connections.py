"""Broker connections: fork safety, libpq options from the URL, masking, listen_url."""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from celery import Celery
from kombu import Connection

import roast_jobs  # noqa: F401 - registers postgresql://
from roast_jobs.broker.connections import Pool, get_pool, mask_url, split_url
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import statements
from roast_jobs.broker.transport import Transport
from tests.conftest import DATABASE_URL, broker_url
from tests.workers import wait_until

LISTENER_LOG = "roast_jobs.broker.listener"


def backend_pid(pool: Pool) -> int:
    with pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def listener_pid(transport: Transport) -> int:
    listener = transport._listen()
    assert listener._conn is not None
    return listener._conn.info.backend_pid


def show(pool: Pool, setting: str) -> str:
    with pool.connection() as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a child made by a plain ``os.fork()``; return its JSON result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            with os.fdopen(write_fd, "w") as out:
                json.dump(fn(), out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)  # no pytest teardown, no atexit in the child
    os.close(write_fd)
    with os.fdopen(read_fd) as result:
        data = result.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed: see its traceback"
    return json.loads(data)


def libpq_url(**params: str) -> str:
    """The test database's libpq URL with ``params`` in its query."""
    url = split_url(DATABASE_URL)[0]
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}" if query else url


@pytest.fixture
def consumer(schema: str) -> Iterator[Connection]:
    """A connection whose pools and LISTEN connection are in use."""
    with Connection(broker_url(schema, polling_interval=3600)) as conn:
        queue = conn.SimpleQueue("forked")
        queue.put({"n": 1})
        assert queue.get(timeout=30).payload == {"n": 1}
        yield conn


# -- 6. a fork does not share sockets --------------------------------------------------


def test_a_forked_child_opens_its_own_connections(consumer: Connection) -> None:
    transport: Transport = consumer.transport
    before = {
        "pool": backend_pid(transport.pool),
        "fast_pool": backend_pid(transport.fast_pool),
        "listener": listener_pid(transport),
    }

    def child() -> dict[str, int]:
        consumer.SimpleQueue("forked").put({"n": 2})  # a publish through the same transport
        return {
            "pool": backend_pid(transport.pool),
            "fast_pool": backend_pid(transport.fast_pool),
            "listener": listener_pid(transport),
        }

    in_the_child = in_child(child)
    assert set(in_the_child.values()).isdisjoint(before.values())
    # The parent's sessions were left alone: every one still there, still its own (the
    # keep-alive thread may have borrowed another pooled connection meanwhile).
    held = {c.info.backend_pid for pool in (transport.pool, transport.fast_pool)
            for c in pool._idle}  # fmt: skip
    assert {before["pool"], before["fast_pool"]} <= held
    assert listener_pid(transport) == before["listener"]
    assert backend_pid(transport.pool) in held
    # And its LISTEN connection still wakes it: no poll for an hour.
    assert consumer.SimpleQueue("forked").get(timeout=30).payload == {"n": 2}


def test_a_forked_child_of_a_celery_app_publishes_on_its_own_connection(
    schema: str, db: psycopg.Connection
) -> None:
    app = Celery("forking", broker=broker_url(schema), set_as_current=False)
    app.send_task("tests.forked", queue="forked_app")

    def producer_pool() -> Pool:
        with app.producer_or_acquire() as producer:
            return producer.connection.transport.pool

    parent = backend_pid(producer_pool())

    def child() -> int:
        app.send_task("tests.forked", queue="forked_app")
        return backend_pid(producer_pool())

    assert in_child(child) != parent
    assert backend_pid(producer_pool()) == parent
    app.send_task("tests.forked", queue="forked_app")
    count = db.execute(
        f"SELECT count(*) FROM \"{schema}\".message WHERE queue = 'forked_app'"
    ).fetchone()
    assert count == (3,)


# -- 8. libpq options from the URL ------------------------------------------------------


@pytest.mark.parametrize(
    "options", ["-c statement_timeout=1234", "-c%20statement_timeout%3D1234"], ids=["raw", "%"]
)
def test_libpq_options_apply_on_both_pools(schema: str, options: str) -> None:
    with Connection(broker_url(schema, options=options)) as conn:
        conn.connect()
        assert show(conn.transport.pool, "statement_timeout") == "1234ms"
    with Connection(broker_url(schema, options=options, synchronous_commit="local")) as conn:
        conn.connect()
        transport: Transport = conn.transport
        assert show(transport.pool, "statement_timeout") == "1234ms"
        assert show(transport.fast_pool, "statement_timeout") == "1234ms"
        assert show(transport.pool, "synchronous_commit") == "local"
        assert show(transport.fast_pool, "synchronous_commit") == "off"


def test_pgoptions_from_the_environment_still_apply(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=4321")
    with Connection(broker_url(schema)) as conn:
        conn.connect()
        assert show(conn.transport.fast_pool, "statement_timeout") == "4321ms"
        assert show(conn.transport.fast_pool, "synchronous_commit") == "off"


def test_a_bad_synchronous_commit_is_refused(schema: str) -> None:
    injected = "on -c default_transaction_read_only=on"
    with pytest.raises(ValueError, match=r"synchronous_commit.*use one of on, off, local"):
        BrokerOptions.from_mapping({"synchronous_commit": injected})
    url = broker_url(schema, synchronous_commit=quote(injected))
    with pytest.raises(ValueError, match="synchronous_commit"):
        Connection(url).connect()
    with Connection(broker_url(schema, synchronous_commit="remote_apply")) as conn:
        conn.connect()
        assert show(conn.transport.pool, "synchronous_commit") == "remote_apply"
        assert show(conn.transport.pool, "default_transaction_read_only") == "off"


def test_every_secret_in_a_url_is_masked() -> None:
    url = (
        "postgresql://app:pw1@db/app?password=pw2&sslpassword=pw3&sslmode=require"
        "&listen_url=" + quote("postgresql://app:pw4@direct/app?password=pw5", safe="")
    )
    masked = mask_url(url)
    for secret in ("pw1", "pw2", "pw3", "pw4", "pw5"):
        assert secret not in masked
    assert masked.startswith("postgresql://app:**@db/app?password=**&sslpassword=**")
    assert "sslmode=require" in masked and "direct" in masked
    assert "pw2" not in Connection("postgresql://app@db/app?password=pw2").as_uri()
    assert mask_url("postgresql:///app?host=/run/pg&password=x") == (
        "postgresql:///app?host=/run/pg&password=**"
    )
    assert "pw4" not in repr(BrokerOptions(listen_url="postgresql://app:pw4@direct/app"))


# -- 9. listen_url, and a warning when LISTEN does not work -----------------------------


def test_listen_url_wakes_consumers(schema: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER_LOG)
    listen_url = libpq_url(sslmode="disable")
    url = broker_url(schema, polling_interval=3600, listen_url=quote(listen_url, safe=""))
    with Connection(url) as conn, Connection(broker_url(schema)) as sender:
        queue = conn.SimpleQueue("woken")
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.2)  # now consuming and LISTENing, the queue claimed empty
        transport: Transport = conn.transport
        assert transport.listen_pool.conninfo == listen_url
        assert transport._listen().pool is transport.listen_pool
        sender.SimpleQueue("woken").put({"n": 1})
        # No poll for an hour: only the notification can bring it.
        assert queue.get(timeout=30).payload == {"n": 1}
    assert [r for r in caplog.records if r.name == LISTENER_LOG] == []


def test_a_listen_connection_that_gets_no_notifications_is_reported(
    schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER_LOG)
    # Notifications do not cross databases: as deaf as LISTEN through PgBouncer.
    elsewhere = split_url(DATABASE_URL)[0].rsplit("/", 1)[0] + "/postgres"
    url = broker_url(schema, polling_interval=0.2, listen_url=quote(elsewhere, safe=""))
    with Connection(url) as conn, Connection(url) as other:
        conn.SimpleQueue("deaf").put({"n": 1})
        assert conn.SimpleQueue("deaf").get(timeout=30).payload == {"n": 1}  # by polling
        other.SimpleQueue("deaf").put({"n": 2})
        assert other.SimpleQueue("deaf").get(timeout=30).payload == {"n": 2}
        listener = conn.transport._listen()
        assert listener._conn is not None and listener._conn.info.dbname == "postgres"
    warnings = [r for r in caplog.records if r.name == LISTENER_LOG]
    assert [r.levelno for r in warnings] == [logging.WARNING]  # once per process
    message = warnings[0].getMessage()
    assert "polling_interval" in message and "listen_url" in message
    assert "every 0.2 s" in message


def test_delivery_checks_wake_no_queue(schema: str) -> None:
    from roast_jobs.broker.listener import PROBE_PREFIX, Listener, Probe, Wakeup

    options = BrokerOptions(schema=schema)
    pool = get_pool(split_url(DATABASE_URL)[0], options)
    sql = statements(schema)
    listener = Listener(pool, sql.listen, Probe(pool, sql.notify_many, schema))
    try:
        listener.connect()
        notes = [f"{PROBE_PREFIX}another process", "real"]  # in commit order
        with pool.connection() as conn:
            conn.execute(sql.notify_many, {"channel": schema, "notes": notes})
        got: list[Wakeup] = []
        wait_until(lambda: got.extend(listener.wait(1.0)) or got, timeout=30)
        assert [w.queue for w in got] == ["real"]
    finally:
        listener.close()


def test_a_bad_listen_url_says_what_is_wrong(schema: str) -> None:
    with pytest.raises(ValueError, match=r"listen_url.*not a PostgreSQL URL"):
        Connection(broker_url(schema, listen_url="mysql://u@h/d")).connect()
    nested = quote(libpq_url(schema="x"), safe="")
    with pytest.raises(ValueError, match=r"listen_url.*libpq parameters only"):
        Connection(broker_url(schema, listen_url=nested)).connect()


# -- failures while connecting leave nothing behind ---------------------------------------


@pytest.fixture
def limited_role(db: psycopg.Connection) -> Iterator[str]:
    """A login role allowed 4 sessions, and its URL."""
    role = f"rjt_limited_{uuid.uuid4().hex[:6]}"
    db.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 4')
    db.execute(f'GRANT CREATE ON DATABASE "{db.info.dbname}" TO "{role}"')
    parts = urlsplit(split_url(DATABASE_URL)[0])
    host = parts.netloc.rsplit("@", 1)[-1]
    try:
        yield f"postgresql://{role}@{host}{parts.path}"
    finally:
        db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        db.execute(f'DROP OWNED BY "{role}"')
        db.execute(f'DROP ROLE "{role}"')


def test_a_loop_registration_refused_by_the_server_leaves_no_session(
    limited_role: str, schema: str, db: psycopg.Connection
) -> None:
    """Celery drops a connection whose set-up failed without closing it, and retries:
    each try must give back what it opened (here the LISTEN session, when the server
    refuses the connection that checks notifications arrive)."""
    from kombu.asynchronous import Hub

    url = f"{limited_role}?schema={schema}&pool_size=1"
    role = limited_role.split("//", 1)[1].split("@", 1)[0]

    def sessions() -> int:
        row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
        return int(row.fetchone()[0])

    with Connection(url) as conn:
        conn.connect()
        pool = conn.transport.pool
        cleared = [c.info.backend_pid for c in pool._idle]
        pool.clear()  # the check's NOTIFY must open a session of its own
        # A closed session leaves pg_stat_activity a moment later: counted now, it would
        # leave one slot more than the one LISTEN takes.
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
        assert wait_until(lambda: db.execute(gone, (cleared,)).fetchone()[0] == 0, timeout=30)
        hogs = [psycopg.connect(limited_role) for _ in range(4 - sessions() - 1)]
        try:
            for _ in range(5):
                # One session left: LISTEN takes it, the check's NOTIFY cannot connect.
                hub = Hub()
                with pytest.raises(psycopg.OperationalError):
                    conn.transport.register_with_event_loop(conn.connection, hub)
                hub.close()
                # A closed session leaves pg_stat_activity a moment after the client goes.
                left = wait_until(lambda: sessions() == 4 - 1, timeout=30)
                assert left, "a failed registration kept its LISTEN session"
        finally:
            for hog in hogs:
                hog.close()
