"""JobManager.start() on an ordinary Celery app: refuses what the job API cannot read (saying
what to set), works on the broker's tables alone without roast-jobs' result backend, and
warns when running jobs would be invisible."""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

import roast_jobs  # noqa: F401 - registers postgresql:// for kombu
from roast_jobs.jobs import JobError, JobManager, JobNotFound, JobState
from roast_jobs.jobs.results import sqlalchemy_url

from .conftest import DATABASE_URL, RESULT_SCHEMA

ROAST_BACKEND = "roast_jobs.jobs.results:ResultBackend"
SETTINGS = (f"result_backend = {ROAST_BACKEND!r}", "database_url = 'postgresql+psycopg://",
            "result_extended = True")  # fmt: skip
# Another database of the same server: it need not exist, start() must refuse either way.
OTHER_DB = DATABASE_URL.rsplit("/", 1)[0] + "/postgres"


def user_app(schema: str, **conf: Any) -> Celery:
    app = Celery(f"user-{uuid.uuid4().hex[:6]}", broker=DATABASE_URL, set_as_current=False)
    # The result tables' schema is process-wide in Celery (a class attribute): keep the
    # tests' own, so that other tests' backends are not moved.
    app.conf.update(
        broker_transport_options={"schema": schema},
        database_table_schemas={"task": RESULT_SCHEMA, "group": RESULT_SCHEMA},
        **conf,
    )
    return app


@pytest.mark.parametrize(
    ("conf", "problem"),
    [
        (  # Celery's stock backend, in another database: UndefinedTable celery_taskmeta
            {"result_backend": "db+" + sqlalchemy_url(OTHER_DB), "result_extended": True},
            "Celery's database backend",
        ),
        (  # Celery's stock backend, same database: UndefinedColumn date_created
            {"result_backend": "db+" + sqlalchemy_url(DATABASE_URL), "result_extended": True},
            "Celery's database backend",
        ),
        (
            {"result_backend": ROAST_BACKEND, "database_url": sqlalchemy_url(OTHER_DB),
             "result_extended": True},
            "database_url",
        ),
        (
            {"result_backend": ROAST_BACKEND, "database_url": sqlalchemy_url(DATABASE_URL)},
            "result_extended is not set",
        ),
        ({"result_backend": ROAST_BACKEND, "result_extended": True}, "database_url"),
    ],
    ids=["stock-other-db", "stock-same-db", "other-db", "not-extended", "no-database-url"],
)  # fmt: skip
def test_start_refuses_a_result_backend_the_job_api_cannot_read(
    schema: str, conf: dict[str, Any], problem: str
) -> None:
    jm = JobManager(user_app(schema, task_acks_late=True, **conf))
    with pytest.raises(JobError) as raised:
        jm.start()
    message = str(raised.value)
    assert type(raised.value).__name__ == "MisconfiguredApp", message
    assert problem in message, message
    for setting in SETTINGS:
        assert setting in message, message
    assert "\n" not in message


def test_without_a_result_backend_the_broker_tables_still_answer(schema: str) -> None:
    app = user_app(schema, task_acks_late=True)
    queue = f"cfg-{uuid.uuid4().hex[:8]}"
    with pytest.warns(UserWarning, match="reads the broker's tables only") as caught:
        jm = JobManager(app).start()
    assert {type(w.message).__name__ for w in caught} == {"JobConfigWarning"}
    try:
        waiting = app.send_task("user.noop", queue=queue)
        delayed = app.send_task("user.noop", queue=queue, countdown=300)
        assert jm.get_job(waiting.id).state is JobState.CREATED
        assert jm.get_job(delayed.id).state is JobState.SCHEDULED
        status = jm.get_queue_status(queue)[queue]
        assert (status.waiting, status.scheduled, status.completed) == (1, 1, 0)
        with pytest.raises(JobNotFound):
            jm.get_job(uuid.uuid4().hex)
    finally:
        jm.stop()


def test_a_cancel_reaches_a_result_backend_elsewhere(schema: str) -> None:
    """With the results in a cache (no table beside the broker's), a cancelled waiting
    job is still recorded there: its result reads REVOKED, not PENDING forever."""
    app = user_app(schema, task_acks_late=True, result_backend="cache+memory://")
    with pytest.warns(UserWarning):
        jm = JobManager(app).start()
    try:
        waiting = app.send_task("user.noop", queue=f"cfg-{uuid.uuid4().hex[:8]}")
        assert jm.cancel_job(waiting.id).state is JobState.CANCELLED
        assert waiting.state == "REVOKED"
        with pytest.raises(TaskRevokedError):
            waiting.get(timeout=5)
    finally:
        jm.stop()


@pytest.mark.parametrize(
    ("conf", "warned"),
    [
        ({}, True),
        ({"task_acks_late": True}, False),
        ({"task_track_started": True}, False),
        ({"task_track_started": True, "result_backend": None}, True),  # nothing stores it
    ],
    ids=["neither", "acks-late", "track-started", "track-started-no-backend"],
)
def test_start_warns_when_a_running_job_would_be_invisible(
    schema: str, conf: dict[str, Any], warned: bool
) -> None:
    full = {"result_backend": ROAST_BACKEND, "database_url": sqlalchemy_url(DATABASE_URL),
            "result_extended": True}  # fmt: skip
    app = user_app(schema, **{**full, **conf})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        JobManager(app).start().stop()
    running = [str(w.message) for w in caught if "running job" in str(w.message)]
    if warned:
        assert running, [str(w.message) for w in caught]
        assert "task_acks_late" in running[0] and "task_track_started" in running[0]
        assert all(type(w.message).__name__ == "JobConfigWarning" for w in caught)
    else:
        assert not running, running


def test_the_stock_configuration_passes_quietly() -> None:
    from tests.apps.jobs_app import app

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with JobManager(app) as jm:
            assert jm.link.result_table is not None
    assert not [w for w in caught if "JobConfigWarning" in type(w.message).__name__]
