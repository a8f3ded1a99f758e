"""Article import: fetch a web page safely and turn it into a markdown document.

``fetch_article(url)`` follows redirects by hand, vetting every hop (``url_safety``), reads at
most ``import_max_bytes``, and extracts title, authors, date and markdown with trafilatura.
Failures raise ``ArticleImportError`` with a ``reason`` code and a ``retryable`` flag.
Plain Python: no Celery, no database.
"""

from __future__ import annotations

import codecs
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
import trafilatura

from roast_jobs.config import get_settings
from roast_jobs.domain.payloads import MAX_CONTENT_CHARS
from roast_jobs.domain.url_safety import (
    ArticleImportError,
    IPNetwork,
    PinnedTransport,
    Resolver,
    Target,
    parse_import_url,
    parse_networks,
    validate_import_url,
    vet_host,
)

__all__ = [
    "MAX_WORDS",
    "MIN_CONTENT_CHARS",
    "ArticleImportError",
    "ImportedArticle",
    "check_size",
    "detect_platforms",
    "extract_article",
    "fetch_article",
    "validate_import_url",
]

_T = TypeVar("_T")

MAX_WORDS = 100_000
MIN_CONTENT_CHARS = 30
UNKNOWN_AUTHOR = "Unknown Author"
UNTITLED = "Untitled Article"
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Some sites refuse clients that do not look like a browser at all (legacy sent a Chrome UA).
USER_AGENT = "Mozilla/5.0 (compatible; roast-jobs article import)"

# Host suffix -> platform, the legacy list; a host matches itself and its subdomains.
PLATFORMS: tuple[tuple[str, str], ...] = (
    ("lesswrong.com", "LessWrong"),
    ("forum.effectivealtruism.org", "EA Forum"),
    ("substack.com", "Substack"),
    ("medium.com", "Medium"),
    ("twitter.com", "Twitter"),
    ("x.com", "Twitter"),
    ("linkedin.com", "LinkedIn"),
    ("facebook.com", "Facebook"),
    ("fb.com", "Facebook"),
)


@dataclass(frozen=True)
class ImportedArticle:
    """An imported page, ready to become a document version."""

    url: str  # as given
    final_url: str  # after redirects
    title: str
    authors: tuple[str, ...]
    published_date: datetime | None
    content: str  # markdown
    platforms: tuple[str, ...]
    word_count: int


def detect_platforms(url: str) -> tuple[str, ...]:
    """Platforms of ``url`` by host suffix: "notmedium.com" is not Medium, "a.medium.com" is."""
    try:
        host = httpx.URL(url.strip()).host.lower().rstrip(".")
    except (httpx.InvalidURL, ValueError):
        return ()
    found = [name for suffix, name in PLATFORMS if host == suffix or host.endswith("." + suffix)]
    return tuple(dict.fromkeys(found))


def fetch_article(
    url: str,
    *,
    allow_private: bool | None = None,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    max_bytes: int | None = None,
    max_redirects: int | None = None,
    max_words: int = MAX_WORDS,
    resolver: Resolver | None = None,
    allow_networks: Iterable[str | IPNetwork] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ImportedArticle:
    """Fetch ``url`` and extract its article; ``None`` arguments come from the settings.

    ``resolver`` replaces ``socket.getaddrinfo`` for the address checks (the connection goes to
    what it returned); addresses in ``allow_networks`` are accepted although not public.
    Raises ``ArticleImportError``.
    """
    settings = get_settings()
    final_url, body, charset = _fetch_html(
        url,
        allow_private=_pick(allow_private, settings.import_allow_private),
        connect_timeout=_pick(connect_timeout, settings.import_connect_timeout),
        read_timeout=_pick(read_timeout, settings.import_read_timeout),
        max_bytes=_pick(max_bytes, settings.import_max_bytes),
        max_redirects=_pick(max_redirects, settings.import_max_redirects),
        resolver=resolver,
        allow_networks=parse_networks(
            allow_networks
            if allow_networks is not None
            else [n for n in settings.import_allow_networks.split(",") if n.strip()]
        ),
        ssl_context=ssl_context,
    )
    html: str | bytes = body.decode(charset, errors="replace") if charset else body
    return extract_article(html, url=url.strip(), final_url=final_url, max_words=max_words)


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _fetch_html(
    url: str,
    *,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
    max_bytes: int,
    max_redirects: int,
    resolver: Resolver | None,
    allow_networks: tuple[IPNetwork, ...],
    ssl_context: ssl.SSLContext | None,
) -> tuple[str, bytes, str | None]:
    """Return (final URL, body, charset from the headers or None)."""
    target = parse_import_url(url)
    start = str(target.url)
    pins: dict[str, list[str]] = {}  # host -> vetted addresses, read by the transport
    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
    )
    headers = {
        "User-Agent": USER_AGENT,
        "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5",
    }
    transport = PinnedTransport(pins, verify=ssl_context or True)
    seen = {_without_fragment(target.url)}
    with httpx.Client(
        transport=transport, timeout=timeout, headers=headers, trust_env=False
    ) as client:
        for hop in range(max_redirects + 1):
            # Every hop is vetted, and its connection pinned to exactly the vetted addresses.
            pins[target.host] = vet_host(
                target.host,
                target.port,
                allow_private=allow_private,
                resolver=resolver,
                allow_networks=allow_networks,
            )
            current = str(target.url)
            try:
                with client.stream("GET", target.url) as response:
                    location = response.headers.get("location")
                    if not (response.is_redirect and location):
                        _check_status(response, current, target.host)
                        body = _read_html(response, current, max_bytes)
                        return current, body, _charset(response)
            except httpx.HTTPError as exc:
                raise _transport_error(exc, target.host, connect_timeout, read_timeout) from None
            except httpx.InvalidURL as exc:  # httpx parses Location itself (for next_request)
                raise ArticleImportError(
                    "invalid_url", f"invalid redirect from {current}: {exc}"
                ) from None
            assert location is not None  # the block above returned otherwise
            if hop == max_redirects:
                raise ArticleImportError(
                    "too_many_redirects",
                    f"invalid redirect: {start} redirected more than {max_redirects} times",
                )
            target = _redirect_target(target.url, location, current)
            key = _without_fragment(target.url)
            if key in seen:
                raise ArticleImportError(
                    "redirect_loop", f"invalid redirect: {current} redirects back to {key} (a loop)"
                )
            seen.add(key)
    raise AssertionError("unreachable")  # the last hop returns or raises


def _without_fragment(url: httpx.URL) -> str:
    return str(url.copy_with(fragment=None))


def _redirect_target(base: httpx.URL, location: str, current: str) -> Target:
    try:
        return parse_import_url(str(base.join(location)))
    except (ArticleImportError, httpx.InvalidURL) as exc:
        detail = exc.message if isinstance(exc, ArticleImportError) else str(exc)
        raise ArticleImportError(
            "invalid_url", f"invalid redirect from {current} to {location!r}: {detail}"
        ) from None


def _check_status(response: httpx.Response, url: str, host: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    phrase = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status in (408, 429) or status >= 500:
        detail = " (rate limited)" if status == 429 else ""
        raise ArticleImportError(
            "http_error", f"{phrase} from {host}{detail}", retryable=True, status_code=status
        )
    raise ArticleImportError(
        "http_error", f"invalid response: {phrase} from {url}", status_code=status
    )


def _read_html(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    too_large = ArticleImportError(
        "too_large", f"invalid document: {url} is larger than {max_bytes:,} bytes"
    )
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type and media_type not in HTML_TYPES:
        raise ArticleImportError(
            "not_html", f"invalid document: {url} is {media_type}, not an HTML page"
        )
    chunks: list[bytes] = []
    size = 0
    # Decoded bytes are counted, so a small compressed body cannot inflate past the limit.
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    if not media_type and b"<html" not in body[:4096].lower():
        raise ArticleImportError(
            "not_html", f"invalid document: {url} has no content type and is not HTML"
        )
    return body


def _charset(response: httpx.Response) -> str | None:
    charset = response.charset_encoding
    if not charset:
        return None  # trafilatura detects it (meta tags, byte sniffing)
    try:
        return codecs.lookup(charset).name
    except LookupError:
        return None


def _transport_error(
    exc: httpx.HTTPError, host: str, connect_timeout: float, read_timeout: float
) -> ArticleImportError:
    if isinstance(exc, httpx.ConnectTimeout):
        return ArticleImportError(
            "timeout", f"connecting to {host} timed out after {connect_timeout:g} s", retryable=True
        )
    if isinstance(exc, httpx.TimeoutException):
        return ArticleImportError(
            "timeout",
            f"fetching from {host} timed out (no data for {read_timeout:g} s)",
            retryable=True,
        )
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            # A bad certificate stays bad: not retryable.
            return ArticleImportError(
                "fetch_failed", f"invalid TLS certificate of {host}: {cause.verify_message}"
            )
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.DecodingError):
        return ArticleImportError("fetch_failed", f"invalid response body from {host}: {exc}")
    return ArticleImportError(
        "fetch_failed", f"network error fetching from {host}: {exc}", retryable=True
    )


def extract_article(
    html: str | bytes,
    *,
    url: str,
    final_url: str | None = None,
    max_words: int = MAX_WORDS,
    min_chars: int = MIN_CONTENT_CHARS,
) -> ImportedArticle:
    """Turn an HTML page into an ``ImportedArticle`` (trafilatura), validating its size."""
    final_url = final_url or url
    shown = final_url if len(final_url) <= 200 else final_url[:200] + "..."
    tree = trafilatura.load_html(html)
    if tree is None:
        raise ArticleImportError(
            "extract_failed", f"invalid document: {shown} is not parsable HTML"
        )
    meta = trafilatura.extract_metadata(trafilatura.load_html(html), default_url=final_url)
    title_text = tree.findtext(".//title")
    # trafilatura resolves relative links against the site root only; lxml does it properly.
    tree.make_links_absolute(final_url, resolve_base_href=True, handle_failures="ignore")
    content = trafilatura.extract(
        tree,
        url=final_url,
        output_format="markdown",
        include_links=True,
        include_formatting=True,
        include_tables=True,
        with_metadata=False,
    )
    content = (content or "").strip()
    if not content:
        raise ArticleImportError(
            "extract_failed", f"invalid document: no article text could be extracted from {shown}"
        )
    word_count = check_size(content, f"the article text of {shown}", max_words, min_chars)
    title = (meta.title if meta and meta.title else None) or (title_text or "").strip()
    return ImportedArticle(
        url=url,
        final_url=final_url,
        title=" ".join(title.split()) or UNTITLED,
        authors=_authors(meta.author if meta else None),
        published_date=_date(meta.date if meta else None),
        content=content,
        platforms=tuple(dict.fromkeys(detect_platforms(url) + detect_platforms(final_url))),
        word_count=word_count,
    )


def check_size(
    content: str, what: str, max_words: int = MAX_WORDS, min_chars: int = MIN_CONTENT_CHARS
) -> int:
    """RoastMyPost's size rule for a document's text (at least ``min_chars`` characters,
    at most ``max_words`` words), for imported and inline documents alike; returns the
    word count. ``what`` names the text in the message."""
    if len(content) < min_chars:
        raise ArticleImportError(
            "too_short",
            f"invalid document: {what} has {len(content)} characters, fewer than {min_chars}",
        )
    if len(content) > MAX_CONTENT_CHARS:
        raise ArticleImportError(
            "too_long",
            f"invalid document: {what} has {len(content):,} characters, more than "
            f"{MAX_CONTENT_CHARS:,}",
        )
    word_count = len(content.split())
    if word_count > max_words:
        raise ArticleImportError(
            "too_long",
            f"invalid document: {what} has {word_count:,} words, more than {max_words:,}",
        )
    return word_count


def _authors(value: str | None) -> tuple[str, ...]:
    names = [" ".join(name.split()) for name in (value or "").split(";")]
    return tuple(dict.fromkeys(name for name in names if name)) or (UNKNOWN_AUTHOR,)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)  # trafilatura: YYYY-MM-DD
    except ValueError:
        return None
