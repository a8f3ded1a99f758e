"""The legacy retry classification shared by both backends, and the stored-error rule."""

from __future__ import annotations

import httpx
import pydantic
import pytest

from roast_jobs.domain.retry_classes import (
    NON_RETRYABLE_SUBSTRINGS,
    RETRYABLE_STATUS_CODES,
    RETRYABLE_SUBSTRINGS,
    classify,
    clean_error,
    is_retryable,
)


@pytest.mark.parametrize("substring", NON_RETRYABLE_SUBSTRINGS)
def test_every_non_retryable_substring_is_permanent(substring: str) -> None:
    assert classify(f"upstream said: {substring.upper()} (details)") == "permanent"


@pytest.mark.parametrize("substring", RETRYABLE_SUBSTRINGS + RETRYABLE_STATUS_CODES)
def test_every_retryable_substring_is_retryable(substring: str) -> None:
    assert classify(f"upstream said: {substring.upper()} (details)") == "retryable"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # the non-retryable list is checked first
        ("invalid response: 503", "permanent"),
        ("Validation failed after a timeout", "permanent"),
        ("Rate limit hit, then 401 Unauthorized", "permanent"),
        ("Document not found (network ok)", "permanent"),
        # retryable
        ("rate limit exceeded", "retryable"),
        ("Request timed out after 30s", "retryable"),
        ("connect ECONNREFUSED 127.0.0.1:5432", "retryable"),
        ("read ECONNRESET", "retryable"),
        ("socket hang up", "retryable"),
        ("Error code: 429 - too many requests", "retryable"),
        ("HTTP 502 Bad Gateway", "retryable"),
        ("status=500", "retryable"),
        ("(504)", "retryable"),
        ("Anthropic API error: overloaded", "retryable"),
        ("503 Service Unavailable", "retryable"),
        ("NETWORK unreachable", "retryable"),
        # anything else is permanent
        ("something odd", "permanent"),
        ("", "permanent"),
        # status codes only as whole tokens (a deliberate deviation from the legacy substring)
        ("took 1500 ms", "permanent"),
        ("used 5000 tokens", "permanent"),
        ("retrying in 1.500 seconds", "permanent"),
        ("port 5029 closed", "permanent"),
        ("error E503x", "permanent"),
    ],
)
def test_messages(message: str, expected: str) -> None:
    assert classify(message) == expected
    assert is_retryable(message) is (expected == "retryable")


class RateLimitError(Exception):
    """Its name says "rate limit", its message does not."""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), "retryable"),
        (TimeoutError("the operation took too long"), "retryable"),
        (ConnectionResetError(104, "Connection reset by peer"), "retryable"),
        (ConnectionRefusedError(111, "refused"), "retryable"),
        (BrokenPipeError(32, "Broken pipe"), "retryable"),
        (httpx.ReadTimeout("read"), "retryable"),
        (httpx.ConnectError("boom"), "retryable"),
        # a non-retryable message still wins over a transient type
        (TimeoutError("invalid credentials"), "permanent"),
        (httpx.ConnectError("Unauthorized proxy"), "permanent"),
        # other types: the message decides, else permanent
        (ValueError("bad value"), "permanent"),
        (ValueError("upstream timeout"), "retryable"),
        (TypeError("unsupported operand"), "permanent"),
        (KeyError("missing"), "permanent"),
        (LookupError("nothing"), "permanent"),
        (RuntimeError("API error: 529 overloaded"), "retryable"),
        (RuntimeError("HTTP 503 from provider"), "retryable"),
        (Exception(), "permanent"),
        # the type's name is not part of the message
        (RateLimitError("boom"), "permanent"),
    ],
)
def test_exceptions(error: BaseException, expected: str) -> None:
    assert classify(error) == expected
    assert is_retryable(error) is (expected == "retryable")


def test_pydantic_validation_error_is_permanent() -> None:
    class Payload(pydantic.BaseModel):
        count: int

    with pytest.raises(pydantic.ValidationError) as info:
        Payload(count="many")  # type: ignore[arg-type]
    assert classify(info.value) == "permanent"


def test_message_and_exception_agree() -> None:
    for text in ("rate limit exceeded", "invalid response: 503", "something odd", "took 1500 ms"):
        assert classify(RuntimeError(text)) == classify(text)


def test_clean_error_strips_control_characters_but_newlines_and_tabs() -> None:
    raw = "line 1\r\n\tline 2\x00\x07\x1b[31mred\x1b[0m\x7f\x85 café 🙂"
    assert clean_error(raw) == "line 1\n\tline 2[31mred[0m café 🙂"


def test_clean_error_truncates() -> None:
    assert len(clean_error("x" * 5000)) == 1000
    assert clean_error("x" * 5000) == "x" * 1000
    assert clean_error("abcdef", limit=3) == "abc"
    assert clean_error("abc", limit=0) == ""
    assert clean_error("short") == "short"
    # the limit applies after stripping
    assert clean_error("\x00" * 10 + "abc", limit=3) == "abc"
    with pytest.raises(ValueError):
        clean_error("abc", limit=-1)


def test_a_lost_database_connection_is_retryable() -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    lost = psycopg.OperationalError("terminating connection due to administrator command")
    assert is_retryable(lost)
    assert is_retryable(OperationalError("SELECT 1", {}, lost))
    assert not is_retryable(psycopg.errors.InvalidTextRepresentation("invalid input syntax"))
