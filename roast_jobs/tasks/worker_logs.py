"""The Celery worker's logs (``roast_jobs.logs``), wired with Celery's signals.

- After Celery sets up its handlers (root, task and multiprocessing loggers), each gets
  the job and secrets filters; with ``ROAST_JOBS_LOG_FORMAT=json`` also the JSON
  formatter; for json the worker writes nothing but JSON lines: the startup banner and
  the shutdown notices become records, and so do warnings issued before Celery's setup.
- Around each task run (task_prerun/postrun, in the process that runs it) the job
  context: ``job_id`` is the RoastMyPost ``Job`` id of the task's ``job_id`` argument,
  else the Celery task id; ``task`` the task's name; ``backend`` "celery"; ``attempt``
  the delivery's retries + 1.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

from celery import Task, _original_os_write, signals
from celery.apps import worker as celery_worker
from celery.utils.log import get_multiprocessing_logger

from roast_jobs.config import get_settings
from roast_jobs.logs import JobContext, JsonFormatter, bind_job, configure_logging, prepare_handler

log = logging.getLogger("celery.worker")

# The job each running task replaced, by task id (put back when it ends).
_previous: dict[str, JobContext | None] = {}


def _log_format() -> str:
    return get_settings().log_format


def _prepare(logger: logging.Logger | None) -> None:
    if logger is not None:
        for handler in logger.handlers:
            prepare_handler(handler, _log_format())


def _after_setup_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    _prepare(logger)
    _prepare(get_multiprocessing_logger())


def _after_setup_task_logger(logger: logging.Logger | None = None, **_: Any) -> None:
    _prepare(logger)


def _worker_init(instance: Any = None, **_: Any) -> None:
    """Before the worker's first words: for json, every line it writes is JSON."""
    if instance is None or _log_format() != "json":
        return
    instance.quiet = True  # the banner is printed; _worker_setup logs it instead
    # Celery adds no handler of its own to a configured root logger. sys.__stderr__:
    # Celery redirects sys.stderr into the logs once started.
    configure_logging("json", stream=sys.__stderr__)
    logging.captureWarnings(True)  # its superuser warning comes before its log set-up
    # Its shutdown notices ("worker: Warm shutdown") are written straight to the
    # terminal from signal handlers, bypassing logging.
    celery_worker.safe_say = _say_as_json


def _say_as_json(msg: str, f: Any = sys.__stderr__) -> None:
    """``celery.apps.worker.safe_say`` as a JSON line: formatted without logging's locks
    (it runs in signal handlers), written with Celery's unpatched os.write."""
    record = logging.LogRecord(log.name, logging.INFO, __file__, 0, str(msg).strip(), None, None)
    line = JsonFormatter().format(record) + "\n"
    with contextlib.suppress(AttributeError, OSError, ValueError):
        _original_os_write(f.fileno(), line.encode())


def _worker_setup(instance: Any = None, **_: Any) -> None:
    if instance is not None and _log_format() == "json":
        log.info("%s%s", instance.startup_info(artlines=False), instance.extra_info() or "")


def _task_prerun(
    task_id: str | None = None,
    task: Task | None = None,
    kwargs: dict[str, Any] | None = None,
    **_: Any,
) -> None:
    if task is None or task_id is None:
        return
    job_id = (kwargs or {}).get("job_id")
    retries = getattr(task.request, "retries", 0) or 0
    job = JobContext(
        job_id=job_id if isinstance(job_id, str) else task_id,
        task=task.name,
        backend="celery",
        attempt=retries + 1,
    )
    _previous[task_id] = bind_job(job)


def _task_postrun(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        bind_job(_previous.pop(task_id, None))


def install() -> None:
    """Connect the handlers (once per process, whatever the number of calls)."""
    pairs = (
        (signals.after_setup_logger, _after_setup_logger),
        (signals.after_setup_task_logger, _after_setup_task_logger),
        (signals.celeryd_init, _worker_init),
        (signals.celeryd_after_setup, _worker_setup),
        (signals.task_prerun, _task_prerun),
        (signals.task_postrun, _task_postrun),
    )
    for signal, handler in pairs:
        signal.connect(handler, weak=False, dispatch_uid=f"roast_jobs.logs.{handler.__name__}")
