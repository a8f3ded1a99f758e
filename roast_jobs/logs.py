"""Logs: one JSON object per line (``ROAST_JOBS_LOG_FORMAT=json``) or plain text, the job
a line was logged for, and no secrets in either.

- ``mask_secrets`` is the one function that hides passwords in text: the password of
  every URL's userinfo, secret-like query parameters (``sslpassword=``, a nested
  ``listen_url``), ``password=`` settings (libpq's key=value conninfo) and bare
  ``user:secret@host``. Logs, CLI errors and tracebacks go through it.
- ``job_context`` (a context variable) names the job being worked on: ``job_id``,
  ``task``, ``backend`` (legacy | celery) and ``attempt``. ``JobContextFilter`` copies it
  onto every record logged while it is set, in whichever logger.
- ``JsonFormatter`` writes ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
  ``process``, the job's fields when there is a job, and ``exception`` when there is one.

The Celery worker's wiring (signals) is in ``roast_jobs.tasks.worker_logs``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from roast_jobs.broker.connections import mask_url

MASK = "**"
LOG_FORMATS = ("text", "json")
#: The job fields a record carries (from ``job_context``, or ``extra=``).
JOB_FIELDS = ("job_id", "task", "backend", "attempt")

# -- masking -----------------------------------------------------------------------------

# A URL runs to the next blank or quote; trailing punctuation it picks up stays as it was.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# password=..., sslpassword='...', api_token=...: a quoted value, or up to a separator.
_SECRET_SETTING = re.compile(
    r"(?i)\b([\w.-]*(?:password|passwd|secret|token)[\w.-]*)(\s*=\s*)"
    r"('[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)"
)
# user:secret@host outside a URL (or inside one that the URL rule could not parse).
_USERINFO = re.compile(r"(?<![\w.%+~-])([\w.%+~-]+):(?!//)([^\s:@/'\"]+)@(?=[\w\[])")


def mask_secrets(text: str) -> str:
    """``text`` with every password-like secret replaced by ``**`` (see the module doc)."""
    if not text:
        return text
    text = _URL.sub(_mask_url_match, text)
    text = _SECRET_SETTING.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def first_line(exc: BaseException) -> str:
    """An error's first line, its secrets masked: for a SQLAlchemy error, its driver's
    (SQLAlchemy adds the statement; psycopg's own goes on with LINE, DETAIL and HINT)."""
    exc = getattr(exc, "orig", None) or exc
    return mask_secrets((str(exc).strip().splitlines() or [type(exc).__name__])[0])


def _mask_url_match(match: re.Match[str]) -> str:
    scheme, rest = match.group(0).split("://", 1)
    # The userinfo ends at the last '@' before the query: a password with an unencoded '@'
    # or '/' (a malformed URL, but one a person may well type) is hidden whole.
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    at = head.rfind("@")
    if at >= 0 and ":" in head[:at]:
        rest = f"{head[:at].split(':', 1)[0]}:{MASK}@{rest[at + 1 :]}"
    return mask_url(f"{scheme}://{rest}", MASK)  # the query's secrets, nested URLs


# -- the job being worked on -------------------------------------------------------------


@dataclass(frozen=True)
class JobContext:
    job_id: str
    task: str
    backend: str  # legacy | celery
    attempt: int | None = None


_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "roast_jobs_job", default=None
)


def current_job() -> JobContext | None:
    return _job.get()


def bind_job(job: JobContext | None) -> JobContext | None:
    """Make ``job`` the current one (None: no job); returns the one it replaces. For
    callers whose start and end are two callbacks (Celery's task_prerun/postrun)."""
    previous = _job.get()
    _job.set(job)
    return previous


@contextlib.contextmanager
def job_context(
    job_id: str, task: str, backend: str, attempt: int | None = None
) -> Iterator[JobContext]:
    """Every record logged inside carries this job's fields."""
    job = JobContext(job_id, task, backend, attempt)
    token = _job.set(job)
    try:
        yield job
    finally:
        _job.reset(token)


# -- filters and the formatter -----------------------------------------------------------


def job_fields(job_id: str, task: str, backend: str, attempt: int | None = None) -> dict[str, Any]:
    """``extra=`` for one line about a job logged outside its ``job_context``."""
    return asdict(JobContext(job_id, task, backend, attempt))


# The RoastMyPost job id in the repr of a task's kwargs ({'job_id': '...', ...}).
_JOB_ID_IN_KWARGS = re.compile(r"""['"]job_id['"]:\s*['"]([A-Za-z0-9_-]+)['"]""")


def _celery_request(record: logging.LogRecord) -> JobContext | None:
    """Celery's lines about a task outside its run (received, revoked, a lost worker:
    the worker's main process) carry the request as ``extra={"data": ...}``."""
    data = getattr(record, "data", None)
    if not isinstance(data, dict) or not data.get("id") or not data.get("name"):
        return None
    found = _JOB_ID_IN_KWARGS.search(str(data.get("kwargs") or ""))
    return JobContext(found.group(1) if found else str(data["id"]), str(data["name"]), "celery")


class JobContextFilter(logging.Filter):
    """Copies the current job's fields onto the record (fields given with ``extra=`` win);
    outside a job, those of the Celery request a line is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _job.get() or _celery_request(record)
        if job is not None:
            for name, value in asdict(job).items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class SecretsFilter(logging.Filter):
    """Masks the record's message and exception text in place, for any formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken record: the handler reports it
        masked = mask_secrets(message)
        if masked != message:
            # Keep the arguments when masking them alone is enough: some formatters read
            # them (uvicorn's access log); else the masked message replaces both.
            args = record.args
            if isinstance(args, tuple) and args:
                record.args = tuple(mask_secrets(a) if isinstance(a, str) else a for a in args)
                if record.getMessage() != masked:
                    record.msg, record.args = masked, None
            else:
                record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _plain.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


_plain = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        entry: dict[str, Any] = {
            "time": when.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
            "process": record.process,
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_secrets(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


# -- installing them ---------------------------------------------------------------------

_HANDLER_NAME = "roast_jobs"


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def check_format(log_format: str) -> str:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use {' or '.join(LOG_FORMATS)}")
    return log_format


def prepare_handler(handler: logging.Handler, log_format: str) -> None:
    """Give ``handler`` the job and secrets filters, and the JSON formatter for json."""
    kinds = {type(f) for f in handler.filters}
    for kind in (JobContextFilter, SecretsFilter):
        if kind not in kinds:
            handler.addFilter(kind())
    if check_format(log_format) == "json":
        handler.setFormatter(JsonFormatter())


def configure_logging(
    log_format: str,
    level: int = logging.WARNING,
    text_format: str = "%(message)s",
    stream: TextIO | None = None,
) -> None:
    """The root logger writes to ``stream`` (default: stderr, whatever it is at the time)
    in ``log_format``; called again, it replaces its own handler. The text default, the
    bare message at WARNING, is what Python prints when nothing is configured."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(text_format))
    prepare_handler(handler, log_format)
    root.addHandler(handler)
    root.setLevel(level)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's own logging config with our filters; for json, our formatter on its
    handlers and on the root logger (the app's own records)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"job": {"()": JobContextFilter}, "secrets": {"()": SecretsFilter}}
    handlers: dict[str, dict[str, Any]] = config["handlers"]
    for handler in handlers.values():
        handler["filters"] = ["job", "secrets"]
    if check_format(log_format) == "json":
        config["formatters"] = {"json": {"()": JsonFormatter}}
        for handler in handlers.values():
            handler["formatter"] = "json"
        config["root"] = {"handlers": ["default"], "level": "INFO"}
    return config
