"""Which evaluation failures are worth retrying: RoastMyPost's legacy rule, shared by both backends.

The legacy job queue matched the lower-cased error message against two substring lists, the
non-retryable one first, and did not retry anything it did not recognise. Both the legacy poller
and the Celery tasks call ``classify`` so a failure is treated the same on either backend.
"""

from __future__ import annotations

import re
from typing import Literal

RetryClass = Literal["retryable", "permanent"]

# Checked first: a request that is wrong stays wrong, whatever else the message says.
NON_RETRYABLE_SUBSTRINGS: tuple[str, ...] = (
    "validation",
    "invalid",
    "not found",
    "unauthorized",
    "forbidden",
    "bad request",
    "schema error",
    "type error",
    "syntax error",
)

RETRYABLE_SUBSTRINGS: tuple[str, ...] = (
    "timeout",
    "timed out",
    "econnrefused",
    "econnreset",
    "socket hang up",
    "rate limit",
    "too many requests",
    "internal server error",
    "network",
    "api error",
    "service unavailable",
    "gateway timeout",
    "connection reset",
)

# Deviation from the legacy lists, which matched "429"/"500"/... anywhere (so "took 1500 ms"
# was a server error): the status codes count only as whole tokens, not inside a longer word
# or number (a decimal like "1.500" included).
RETRYABLE_STATUS_CODES: tuple[str, ...] = ("429", "500", "502", "503", "504")
_STATUS_CODE = re.compile(r"(?<![\w.])(?:" + "|".join(RETRYABLE_STATUS_CODES) + r")(?!\w|\.\d)")


def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "try again later", whatever their message."""
    types: list[type[BaseException]] = [TimeoutError, ConnectionError]
    try:
        import httpx
    except ImportError:  # httpx is optional: only evaluators that call out need it
        pass
    else:
        types += [httpx.TimeoutException, httpx.NetworkError]
    # The database went away (restart, failover, a killed session): the run can be
    # repeated; a legacy message list knows nothing of PostgreSQL's wording.
    import psycopg
    from sqlalchemy import exc as sa_exc

    types += [psycopg.OperationalError, sa_exc.OperationalError, sa_exc.DisconnectionError]
    return tuple(types)


_TRANSIENT_TYPES = _transient_types()


def classify_message(message: str) -> RetryClass:
    """The legacy substring rule on an error message alone."""
    text = message.lower()
    if any(s in text for s in NON_RETRYABLE_SUBSTRINGS):
        return "permanent"
    if any(s in text for s in RETRYABLE_SUBSTRINGS) or _STATUS_CODE.search(text):
        return "retryable"
    return "permanent"


def classify(error: BaseException | str) -> RetryClass:
    """``"retryable"`` or ``"permanent"`` for a failure (an exception or its stored message).

    The message is matched as in the legacy queue (non-retryable words win). A timeout or
    connection error whose message says nothing either way is retryable by its type; every
    other type (``ValueError``, ``KeyError``, pydantic's ``ValidationError``...) is decided by
    its message alone and is permanent when that matches nothing.
    """
    if isinstance(error, str):
        return classify_message(error)
    text = str(error).lower()
    if any(s in text for s in NON_RETRYABLE_SUBSTRINGS):
        return "permanent"
    if isinstance(error, _TRANSIENT_TYPES):
        return "retryable"
    return classify_message(text)


def is_retryable(error: BaseException | str) -> bool:
    return classify(error) == "retryable"


# C0 and C1 control characters and DEL, except tab (\x09) and newline (\x0a).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_error(text: str, limit: int = 1000) -> str:
    """An error message fit to store: no control characters but \\n and \\t, at most ``limit``
    characters (the legacy Job.error rule)."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    return _CONTROL.sub("", text)[:limit]
