"""One engine per process and URL, and a forked child never uses its parent's connections
(a prefork Celery worker's children would otherwise interleave on one socket)."""

from __future__ import annotations

import os

from sqlalchemy import text

from roast_jobs.db.session import get_engine, transaction


def backend_pid(url: str) -> int:
    with transaction(url) as s:
        return int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_one_engine_per_url_and_sessions_run_in_utc(app_db: str) -> None:
    assert get_engine(app_db) is get_engine(app_db)
    with transaction(app_db) as s:
        assert s.execute(text("SHOW timezone")).scalar_one() == "UTC"


def test_a_forked_child_opens_its_own_connections(app_db: str) -> None:
    parent_pid = backend_pid(app_db)  # a pooled connection, idle in the parent's pool
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.write(write, str(backend_pid(app_db)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    reported = os.read(read, 64).decode()
    os.close(read)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert int(reported) != parent_pid, "the child reused the parent's connection"
    # The parent's pooled connection still works (the child did not close it).
    assert backend_pid(app_db) == parent_pid
