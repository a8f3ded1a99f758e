"""What the job API needs of a Celery app, checked once at ``JobManager.start()``.

The job API reads Celery's results with SQL, on the broker's own connection, so it needs
roast-jobs' result backend (Celery's task table plus the columns it adds), in the broker's
database, with ``result_extended``. What ``start()`` does with an app that has not:

- a database backend that is not roast-jobs' one, one in another database or one without
  ``result_extended``: ``MisconfiguredApp``, saying what to set (the job API would fail
  later, on the first look-up, with a raw SQL error);
- no result backend, or one that is not a database (redis, rpc, ...): works on the
  broker's tables alone (waiting, delayed, running with ``task_acks_late``, dead-lettered;
  queue counts without completed/failed), with a ``JobConfigWarning`` saying what is missing;
- neither ``task_acks_late`` nor ``task_track_started``: a ``JobConfigWarning``, since a
  running job is then in no table the job API reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg
from celery import Celery
from celery.app.backends import by_url
from celery.backends.database import DatabaseBackend
from celery.backends.database.models import TaskExtended
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url

from roast_jobs.broker.connections import mask_url

from .errors import JobError
from .results import ResultBackend
from .sql import SERVER_IDENTITY

if TYPE_CHECKING:
    from .link import BrokerLink

RESULT_BACKEND = "roast_jobs.jobs.results:ResultBackend"


class MisconfiguredApp(JobError, RuntimeError):
    """The app's configuration does not let the job API work; the message says what to set."""


class JobConfigWarning(UserWarning):
    """The job API works on this app, but without something (the message says what)."""


@dataclass(frozen=True)
class AppCheck:
    #: The result table the job API reads; None: the broker's tables only.
    result_table: str | None
    warnings: list[str] = field(default_factory=list)


def check_app(app: Celery, link: BrokerLink) -> AppCheck:
    """Refuse (``MisconfiguredApp``) or accept ``app`` for the job API, with warnings."""
    setup = _setup(link)
    configured = app.conf.result_backend
    try:
        cls, url = by_url(app.backend_cls or configured, app.loader)
    except Exception as exc:
        raise MisconfiguredApp(
            f"the app's result backend {configured!r} cannot be loaded ({_line(exc)}): set {setup}"
        ) from None
    warnings: list[str] = []
    table: str | None = None
    if not issubclass(cls, DatabaseBackend):
        warnings.append(
            f"the app's result backend ({configured or 'none set'}) is not roast-jobs' "
            "ResultBackend, so the job API reads the broker's tables only: get_job knows "
            "waiting, delayed, running (with task_acks_late) and dead-lettered jobs but not "
            "finished ones, and get_queue_status has no completed/failed counts; for all of "
            f"it set {setup}"
        )
    elif not issubclass(cls, ResultBackend):
        raise MisconfiguredApp(
            f"the app's result backend ({_masked(configured)}) is Celery's database backend, "
            "whose table lacks the columns the job API reads: set " + setup
        )
    else:
        table = _check_result_backend(app, url, link, setup)
    # Without either, the message is gone (acked at receipt) and no STARTED row is written.
    if not app.conf.task_acks_late and not (app.conf.task_track_started and table):
        warnings.append(
            "neither task_acks_late nor task_track_started is set: a running job is in no "
            "table the job API reads, so get_job and cancel_job(terminate=True) do not find "
            "it; set task_acks_late = True, or task_track_started = True (with roast-jobs' "
            "ResultBackend)"
        )
    return AppCheck(table, warnings)


def _check_result_backend(app: Celery, url: str | None, link: BrokerLink, setup: str) -> str:
    # Read from the configuration as DatabaseBackend does, not from a backend: building one
    # creates its tables (database_create_tables_at_setup), and a check must create nothing.
    conf = app.conf
    database = url or conf.database_url
    if not database:
        raise MisconfiguredApp(f"database_url is not set: set {setup}")
    if not conf.result_extended:
        raise MisconfiguredApp(
            "result_extended is not set: the job API needs the task name, arguments and queue "
            f"stored with each result; set {setup}"
        )
    if not _same_database(str(database), link):
        raise MisconfiguredApp(
            f"the result backend's database_url ({_masked(database)}) is not the broker's "
            f"database: the job API reads both on one connection; set {setup}"
        )
    schema = (conf.database_table_schemas or {}).get("task")
    name = (conf.database_table_names or {}).get("task") or TaskExtended.__tablename__
    return f'"{schema}"."{name}"' if schema else f'"{name}"'


def _same_database(backend_url: str, link: BrokerLink) -> bool:
    try:
        url = make_url(backend_url)
    except Exception:
        return False
    if url.get_backend_name() != "postgresql":
        return False
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    broker = link.transport.pool.conninfo
    if _where(libpq) == _where(broker):
        return True
    # Spelled differently (localhost and 127.0.0.1, ...): ask both servers.
    try:
        with psycopg.connect(libpq, connect_timeout=5) as conn:
            theirs = conn.execute(SERVER_IDENTITY).fetchone()
    except psycopg.Error as exc:
        raise MisconfiguredApp(
            f"cannot connect to the result backend's database_url ({_masked(backend_url)}): "
            f"{_line(exc)}; point it at the broker's database"
        ) from None
    return theirs is not None and tuple(theirs) == tuple(link.fetch(SERVER_IDENTITY)[0])


def _where(conninfo: str) -> tuple[str | None, ...]:
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return (conninfo,)
    return tuple(params.get(k) for k in ("host", "hostaddr", "port", "dbname", "user"))


def _setup(link: BrokerLink) -> str:
    """The settings that give the whole job API, with this broker's database filled in."""
    database = "postgresql+psycopg://" + mask_url(link.transport.pool.conninfo).split("://", 1)[1]
    return (
        f"result_backend = {RESULT_BACKEND!r}, database_url = {database!r} (the broker's "
        "database) and result_extended = True"
    )


def _masked(url: object) -> str:
    return mask_url(str(url)) if url else "none"


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
