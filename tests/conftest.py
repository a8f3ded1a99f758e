"""Fixtures: every test run gets its own schemas on the real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from kombu import Connection

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
DATABASE_URL = os.environ.get("ROAST_JOBS_TEST_DATABASE_URL") or os.environ.get(
    "DATABASE_URL", DEFAULT_URL
)
RUN_ID = uuid.uuid4().hex[:8]
BROKER_SCHEMA = f"rjt_{RUN_ID}_broker"
RESULT_SCHEMA = f"rjt_{RUN_ID}_results"

# Worker subprocesses and the app under test read these, as a deployment would.
os.environ["DATABASE_URL"] = DATABASE_URL
os.environ["ROAST_JOBS_BROKER_SCHEMA"] = BROKER_SCHEMA
os.environ["ROAST_JOBS_RESULT_SCHEMA"] = RESULT_SCHEMA
os.environ.setdefault("ROAST_JOBS_POLL_INTERVAL", "1.0")


def drop_schema(schema: str) -> None:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session", autouse=True)
def _session_schemas() -> Iterator[None]:
    yield
    for schema in (BROKER_SCHEMA, RESULT_SCHEMA):
        drop_schema(schema)


@pytest.fixture(scope="session", autouse=True)
def _worker_logs(request: pytest.FixtureRequest) -> Iterator[None]:
    """Worker logs go to one folder per run, removed when every test passed."""
    folder = tempfile.mkdtemp(prefix=f"roast-jobs-test-{RUN_ID}-")
    os.environ["ROAST_JOBS_TEST_LOGS"] = folder
    yield
    if request.session.testsfailed:
        print(f"\nworker logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def db() -> Iterator[psycopg.Connection]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture
def schema() -> Iterator[str]:
    """A broker schema of its own for one test."""
    from roast_jobs.broker.connections import close_pools
    from roast_jobs.broker.maintenance import forget_schema

    name = f"rjt_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    yield name
    # Pools are per process and broker: one per test would pile up idle sessions.
    close_pools(name)
    drop_schema(name)
    forget_schema(name)


@pytest.fixture(scope="module")
def app_db() -> Iterator[str]:
    """A database of the test module's own, with the app's schema (dropped afterwards)."""
    from tests.domain_support import fresh_database

    with fresh_database() as url:
        yield url


@pytest.fixture(scope="module")
def service(app_db: str) -> Iterator[Any]:
    """A JobService on ``app_db``; its manager started, which creates the broker schema
    (as any Celery use would)."""
    from roast_jobs.service.job_service import JobService

    svc = JobService(app_db)
    svc.manager  # noqa: B018
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def api(app_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``roast-jobs api`` on ``app_db`` in a subprocess: its base URL."""
    from tests.api_support import serve_api

    log = tmp_path_factory.mktemp("api") / "log"
    # Imports may fetch the tests' own pages on 127.0.0.1; flags changed by a test (not
    # through the API) are seen by the next request.
    env = {
        "ROAST_JOBS_IMPORT_ALLOW_NETWORKS": "127.0.0.1/32",
        "ROAST_JOBS_FLAG_REFRESH_SECONDS": "0.01",
    }
    with serve_api(app_db, log, env) as base:
        yield base


@pytest.fixture(scope="module")
def people(app_db: str) -> dict[str, Any]:
    """alice, bob and an admin with API keys (tests/api_support.py: make_people)."""
    from tests.api_support import make_people

    return make_people(app_db)


def broker_url(schema: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())
    return f"{DATABASE_URL}?{query}"


@pytest.fixture
def conn(schema: str) -> Iterator[Connection]:
    import roast_jobs  # noqa: F401

    with Connection(broker_url(schema)) as c:
        c.connect()
        yield c
