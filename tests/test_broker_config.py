"""Selecting, configuring and connecting the transport."""

from __future__ import annotations

import multiprocessing

import psycopg
import pytest
from celery import Celery
from kombu import Connection

import roast_jobs  # noqa: F401 - registers postgresql://
from roast_jobs.broker.connections import mask_url, split_url
from roast_jobs.broker.maintenance import forget_schema
from roast_jobs.broker.options import BrokerOptions
from roast_jobs.broker.sql import SCHEMA_VERSION
from roast_jobs.broker.transport import Transport
from tests.conftest import DATABASE_URL, broker_url


def test_password_is_masked() -> None:
    conn = Connection("postgresql://app:s3cret@db.example:5432/app?schema=jobs")
    assert "s3cret" not in conn.as_uri()
    assert conn.as_uri() == "postgresql://app:**@db.example:5432/app?schema=jobs"
    assert "s3cret" in conn.as_uri(include_password=True)
    assert mask_url("postgresql://u@h/d") == "postgresql://u@h/d"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "pgsql"])
def test_schemes_resolve_to_this_transport(scheme: str) -> None:
    conn = Connection(f"{scheme}://u@localhost/db")
    assert conn.transport_cls == scheme
    assert isinstance(conn.transport, Transport)
    assert conn.transport.driver_type == "postgresql"  # not 'sql': events stay on


def test_celery_app_and_explicit_transport(schema: str) -> None:
    app = Celery("t", broker=broker_url(schema), set_as_current=False)
    with app.connection_for_write() as conn:
        conn.connect()
        assert isinstance(conn.transport, Transport)
    explicit = Celery("t2", broker=broker_url(schema), set_as_current=False)
    explicit.conf.broker_transport = "roast_jobs.broker.transport:Transport"
    with explicit.connection_for_write() as conn:
        conn.connect()
        assert isinstance(conn.transport, Transport)


def test_separate_fields_and_transport_options(schema: str) -> None:
    parts = split_url(DATABASE_URL)[0].split("://", 1)[1]
    user, rest = parts.split("@", 1)
    hostport, db = rest.split("/", 1)
    host, _, port = hostport.partition(":")
    conn = Connection(
        hostname=host,
        port=int(port or 5432),
        userid=user,
        virtual_host=db,
        transport="roast_jobs.broker.transport:Transport",
        transport_options={"schema": schema, "lease_seconds": 12},
    )
    with conn:
        conn.connect()
        assert conn.transport.options.lease_seconds == 12
        assert conn.transport.options.schema == schema


def test_url_options_are_parsed_and_validated() -> None:
    libpq, opts = split_url("postgresql://u@h/d?sslmode=disable&schema=x&lease_seconds=5")
    assert libpq == "postgresql://u@h/d?sslmode=disable"
    assert BrokerOptions.from_mapping(opts).lease_seconds == 5.0
    with pytest.raises(ValueError, match="invalid schema name"):
        BrokerOptions.from_mapping({"schema": "Robert'); DROP TABLE x;--"})
    with pytest.raises(ValueError, match="lease_seconds"):
        BrokerOptions.from_mapping({"lease_seconds": "soon"})
    with pytest.raises(ValueError, match="native_delay"):
        BrokerOptions.from_mapping({"native_delay": "maybe"})
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        split_url("mysql://u:pw@h/d")


def test_unreachable_server_is_a_connection_error() -> None:
    conn = Connection("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(conn.connection_errors):
        conn.connect()
    assert psycopg.OperationalError in conn.connection_errors


def _connect(url: str) -> None:
    with Connection(url) as conn:
        conn.connect()


def test_many_processes_create_the_schema_at_once(schema: str, db) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_connect, args=(broker_url(schema),)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    version = db.execute(
        f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'"
    ).fetchone()
    assert version == (str(SCHEMA_VERSION),)


def test_a_version_1_schema_is_upgraded_in_place(schema: str, db) -> None:
    _connect(broker_url(schema))
    with Connection(broker_url(schema)) as conn:
        conn.SimpleQueue("old").put({"kept": True})
    # Back to what version 1 created: no singleton keys.
    db.execute(f'DROP INDEX "{schema}".message_singleton_idx')
    db.execute(f'ALTER TABLE "{schema}".message DROP COLUMN singleton_key')
    db.execute(f'ALTER TABLE "{schema}".dead_letter DROP COLUMN singleton_key')
    db.execute(f"UPDATE \"{schema}\".meta SET value = '1' WHERE key = 'schema_version'")
    forget_schema(schema)
    with Connection(broker_url(schema)) as conn:
        q = conn.SimpleQueue("old")
        assert q.get(timeout=5).payload == {"kept": True}
    version = db.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'schema_version'")
    assert version.fetchone() == (str(SCHEMA_VERSION),)
    cols = db.execute(
        "SELECT table_name FROM information_schema.columns "
        "WHERE table_schema = %s AND column_name = 'singleton_key' ORDER BY 1",
        (schema,),
    ).fetchall()
    assert cols == [("dead_letter",), ("message",)]
