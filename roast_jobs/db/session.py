"""One SQLAlchemy engine per process and database URL, from ``Settings``.

Sessions run in UTC (Prisma's timestamps are UTC without a zone). Prefork workers inherit
the parent's pool: the child drops it without closing the parent's sockets
(``dispose(close=False)``), so parent and child never share a connection.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from roast_jobs.config import get_settings
from roast_jobs.jobs.results import sqlalchemy_url

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker[Session]] = {}


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().require_database_url()
    engine = _engines.get(url)
    if engine is None:
        with _lock:
            engine = _engines.get(url)
            if engine is None:
                engine = create_engine(
                    sqlalchemy_url(url),
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=10,
                    connect_args={"options": "-c timezone=UTC"},
                )
                _engines[url] = engine
                _makers[url] = sessionmaker(engine, expire_on_commit=False)
    return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().require_database_url()
    get_engine(url)
    return _makers[url]


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session inside one transaction: committed at the end, rolled back on error."""
    with session_factory(url)() as session, session.begin():
        yield session


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()


def _after_fork_in_child() -> None:
    for engine in list(_engines.values()):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)
