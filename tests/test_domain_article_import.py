"""Article import against a real local HTTP(S) server: extraction, limits, redirects, SSRF."""

from __future__ import annotations

import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import pytest

from roast_jobs.config import get_settings
from roast_jobs.domain.article_import import (
    ArticleImportError,
    ImportedArticle,
    detect_platforms,
    extract_article,
    fetch_article,
    validate_import_url,
)
from roast_jobs.domain.url_safety import PinnedBackend, address_problem, vet_host

ARTICLE = b"""<!doctype html>
<html><head>
<title>The Analytical Engine | Example Blog</title>
<meta name="author" content="Ada Lovelace; Charles Babbage">
<meta property="article:published_time" content="2024-03-15T10:00:00Z">
</head><body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<article>
<h1>The Analytical Engine</h1>
<p>The engine can compute <a href="/notes/bernoulli">Bernoulli numbers</a> with ease, and it is
a general purpose machine that follows the instructions punched on its cards.</p>
<h2>Operations</h2>
<p>It performs addition, subtraction, multiplication and division, keeping every intermediate
result in the store until the mill needs it again (see <a href="cards.html">the cards</a>).</p>
<p>A third paragraph with <b>bold</b> and <em>emphasis</em>, so that there is enough text.</p>
</article>
<footer>Copyright 2024</footer>
</body></html>"""

PLAIN = b"""<html><head><title>No metadata</title></head><body><article>
<p>This page names no author and gives no date, but it has more than enough text to count
as an article of its own, which is all the importer needs.</p></article></body></html>"""

SHORT = b"<html><head><title>Tiny</title></head><body><p>Too short.</p></body></html>"


def _words_page(count: int) -> bytes:
    paragraphs = (
        "<p>" + " ".join(f"w{start + i}" for i in range(min(100, count - start))) + "</p>"
        for start in range(0, count, 100)
    )
    return f"<html><body><article>{''.join(paragraphs)}</article></body></html>".encode()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Host", "")))
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        path = parts.path
        if path == "/blog/article":
            self._send(200, ARTICLE)
        elif path == "/plain":
            self._send(200, PLAIN)
        elif path == "/short":
            self._send(200, SHORT)
        elif path == "/latin1":
            body = "<html><body><p>Un café au lait, s'il vous plaît, et un croissant.</p></body>"
            self._send(200, body.encode("latin-1"), "text/html; charset=iso-8859-1")
        elif path == "/big":
            self._send(200, b"<html><body>" + b"x" * int(query["size"]) + b"</body></html>")
        elif path == "/big-stream":  # no Content-Length: the body ends when the connection does
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            for _ in range(int(query["size"]) // 1000):
                self.wfile.write(b"<p>" + b"y" * 993 + b"</p>")
        elif path == "/json":
            self._send(200, b'{"title": "not a page"}', "application/json")
        elif path == "/png":
            self._send(200, b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
        elif path == "/untyped-html":
            self._send(200, PLAIN, None)
        elif path == "/untyped-binary":
            self._send(200, b"\0\1\2 binary", None)
        elif path.startswith("/chain/"):  # /chain/3 -> /chain/2 -> ... -> /blog/article
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{left - 1}" if left > 1 else "/blog/article")
        elif path == "/loop-a":
            self._redirect("loop-b")  # relative Location
        elif path == "/loop-b":
            self._redirect("/loop-a#again")
        elif path == "/redirect":
            self._redirect(query["to"])
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"<html><body>error page</body></html>")
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, ARTICLE)
        elif path == "/words":
            self._send(200, _words_page(int(query["n"])))
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes, content_type: str | None = "text/html") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, str]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The fetcher hangs up on purpose (too large, a refused certificate): not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError):
            super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def _start(context: ssl.SSLContext | None = None) -> _Server:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.requests = []
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def _server() -> Iterator[_Server]:
    server = _start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(_server: _Server) -> _Server:
    _server.requests.clear()
    return _server


def base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def fetch(url: str, **kwargs: object) -> ImportedArticle:
    kwargs.setdefault("allow_private", True)
    return fetch_article(url, **kwargs)  # type: ignore[arg-type]


# RoastMyPost's legacy classifier (retryable-error.ts): non-retryable words are checked first.
LEGACY_NON_RETRYABLE = ("validation", "invalid", "unauthorized", "forbidden", "not found", "404")
LEGACY_NON_RETRYABLE += ("bad request", "400", "parse error")
LEGACY_RETRYABLE = ("timeout", "timed out", "econnrefused", "econnreset", "network", "rate limit")
LEGACY_RETRYABLE += ("too many requests", "429", "500", "502", "503", "504", "service unavailable")


def legacy_retryable(message: str) -> bool:
    text = message.lower()
    if any(word in text for word in LEGACY_NON_RETRYABLE):
        return False
    return any(word in text for word in LEGACY_RETRYABLE)


def import_error(call: Callable[[], object], reason: str, *, retryable: bool = False) -> str:
    """Run ``call``, expect ArticleImportError(reason), return its message."""
    with pytest.raises(ArticleImportError) as info:
        call()
    error = info.value
    assert (error.reason, error.retryable) == (reason, retryable), str(error)
    # The legacy classifier, reading only the message, must agree with the flag.
    assert legacy_retryable(str(error)) is retryable, str(error)
    return str(error)


# -- extraction --------------------------------------------------------------------------


def test_article_title_authors_date_and_markdown(server: _Server) -> None:
    url = f"{base(server)}/blog/article"
    article = fetch(url)
    assert article.url == article.final_url == url
    assert article.title == "The Analytical Engine"
    assert article.authors == ("Ada Lovelace", "Charles Babbage")
    assert article.published_date == datetime(2024, 3, 15, tzinfo=UTC)
    assert "## Operations" in article.content
    # Links are absolute, resolved against the page's own URL (not the site root).
    assert f"[Bernoulli numbers]({base(server)}/notes/bernoulli)" in article.content
    assert f"[the cards]({base(server)}/blog/cards.html)" in article.content
    assert "**bold**" in article.content
    assert "Copyright" not in article.content and "About" not in article.content
    assert article.word_count == len(article.content.split())
    assert article.platforms == ()
    with pytest.raises(FrozenInstanceError):
        article.title = "changed"  # type: ignore[misc]


def test_no_author_is_unknown_author_and_no_date_is_none(server: _Server) -> None:
    article = fetch(f"{base(server)}/plain")
    assert article.authors == ("Unknown Author",)
    assert article.published_date is None
    assert article.title == "No metadata"


def test_charset_from_content_type(server: _Server) -> None:
    assert "café au lait" in fetch(f"{base(server)}/latin1").content


def test_too_short_is_invalid(server: _Server) -> None:
    message = import_error(lambda: fetch(f"{base(server)}/short"), "too_short")
    assert "invalid document" in message and "fewer than 30" in message


def test_nothing_extractable(server: _Server) -> None:
    html = "<html><head><title>Empty</title></head><body><script>x()</script></body></html>"
    import_error(lambda: extract_article(html, url="https://example.com/"), "extract_failed")


def test_max_words(server: _Server) -> None:
    message = import_error(lambda: fetch(f"{base(server)}/blog/article", max_words=20), "too_long")
    assert "words, more than 20" in message


def test_real_word_limit(server: _Server) -> None:
    started = time.monotonic()
    message = import_error(lambda: fetch(f"{base(server)}/words?n=100001"), "too_long")
    assert "100,001 words, more than 100,000" in message
    assert time.monotonic() - started < 5


# -- size and type -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/big?size=50000", "/big-stream?size=50000"])
def test_too_large(server: _Server, path: str) -> None:
    message = import_error(lambda: fetch(base(server) + path, max_bytes=10_000), "too_large")
    assert "larger than 10,000 bytes" in message


def test_max_bytes_defaults_to_the_setting(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "import_max_bytes", 10_000)
    import_error(lambda: fetch(f"{base(server)}/big-stream?size=50000"), "too_large")
    assert fetch(f"{base(server)}/blog/article").word_count > 50


@pytest.mark.parametrize("path", ["/json", "/png", "/untyped-binary"])
def test_not_html(server: _Server, path: str) -> None:
    assert "not" in import_error(lambda: fetch(base(server) + path), "not_html")


def test_html_without_content_type_is_sniffed(server: _Server) -> None:
    assert fetch(f"{base(server)}/untyped-html").title == "No metadata"


# -- redirects -----------------------------------------------------------------------------


def test_three_redirects_are_followed(server: _Server) -> None:
    article = fetch(f"{base(server)}/chain/3", max_redirects=5)
    assert article.url == f"{base(server)}/chain/3"
    assert article.final_url == f"{base(server)}/blog/article"
    assert len(server.requests) == 4


def test_six_redirects_are_too_many(server: _Server) -> None:
    url = f"{base(server)}/chain/6"
    message = import_error(lambda: fetch(url, max_redirects=5), "too_many_redirects")
    assert message == f"invalid redirect: {url} redirected more than 5 times"
    assert len(server.requests) == 6
    assert fetch(f"{base(server)}/chain/5", max_redirects=5).title == "The Analytical Engine"


def test_redirect_loop(server: _Server) -> None:
    message = import_error(lambda: fetch(f"{base(server)}/loop-a"), "redirect_loop")
    assert "loop" in message
    assert [path for path, _ in server.requests] == ["/loop-a", "/loop-b"]


@pytest.mark.parametrize("target", ["ftp://example.com/file", "javascript:alert(1)"])
def test_redirect_to_another_scheme(server: _Server, target: str) -> None:
    message = import_error(lambda: fetch(f"{base(server)}/redirect?to={target}"), "invalid_url")
    assert "invalid redirect" in message


# -- address checks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback (IPv4-mapped 127.0.0.1)"),
        ("::ffff:10.0.0.1", "private (IPv4-mapped 10.0.0.1)"),
        ("2002:7f00:1::", "loopback (6to4 127.0.0.1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (NAT64 169.254.169.254)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "not globally routable"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_address_problem(address: str, problem: str | None) -> None:
    assert address_problem(address) == problem


def test_loopback_is_refused_before_any_request(server: _Server) -> None:
    url = f"{base(server)}/blog/article"
    message = import_error(lambda: fetch_article(url, allow_private=False), "private_address")
    assert message == (
        "forbidden: address 127.0.0.1 is loopback; "
        "set ROAST_JOBS_IMPORT_ALLOW_PRIVATE=1 to allow it"
    )
    assert server.requests == []


def test_allow_private_defaults_to_the_setting(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{base(server)}/blog/article"
    monkeypatch.setattr(get_settings(), "import_allow_private", False)
    import_error(lambda: fetch_article(url), "private_address")
    monkeypatch.setattr(get_settings(), "import_allow_private", True)
    assert fetch_article(url).title == "The Analytical Engine"


@pytest.mark.parametrize("host", ["localhost", "2130706433", "127.1", "0x7f.1"])
def test_names_resolving_to_loopback_are_refused(server: _Server, host: str) -> None:
    # Checked after resolution: these are not IP literals, yet all reach 127.0.0.1.
    url = f"http://{host}:{server.port}/blog/article"
    message = import_error(lambda: fetch_article(url, allow_private=False), "private_address")
    assert f"of {host} is loopback" in message
    assert server.requests == []


def test_any_private_address_refuses_the_host() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "10.1.2.3"]

    message = import_error(
        lambda: vet_host("mixed.test", 80, allow_private=False, resolver=resolver),
        "private_address",
    )
    assert "address 10.1.2.3 of mixed.test is private" in message
    assert vet_host("mixed.test", 80, allow_private=True, resolver=resolver) == [
        "93.184.216.34",
        "10.1.2.3",
    ]


def _resolver(table: dict[str, list[str]], calls: list[str]) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("http://169.254.169.254/latest/meta-data/", "address 169.254.169.254 is link-local"),
        ("http://10.0.0.1/", "address 10.0.0.1 is private"),
        ("http://[::1]:{port}/blog/article", "address ::1 is loopback"),
        ("http://127.0.0.2:{port}/blog/article", "address 127.0.0.2 is loopback"),
        ("http://internal.test/admin", "address 10.0.0.5 of internal.test is private"),
    ],
)
def test_redirect_to_a_private_address_is_refused(server: _Server, target: str, shown: str) -> None:
    # The first hop is allowed (127.0.0.1 is on the allow list, allow_private stays False), so
    # it is the check of the redirect target that refuses: the server sees only the first hop.
    resolver = _resolver({"internal.test": ["10.0.0.5"]}, [])
    location = target.format(port=server.port)
    message = import_error(
        lambda: fetch_article(
            f"{base(server)}/redirect?to={location}",
            allow_private=False,
            allow_networks=["127.0.0.1/32"],
            resolver=resolver,
        ),
        "private_address",
    )
    assert shown in message
    assert [path for path, _ in server.requests] == [f"/redirect?to={location}"]


def test_redirect_within_allowed_addresses_is_followed(server: _Server) -> None:
    article = fetch_article(
        f"{base(server)}/redirect?to=/blog/article",
        allow_private=False,
        allow_networks=["127.0.0.1/32"],
    )
    assert article.title == "The Analytical Engine"


def test_connection_is_pinned_to_the_vetted_address(server: _Server) -> None:
    # "public.test" exists only in this resolver: the request can only have reached the server
    # through the vetted address, and the name was resolved once (no second, rebindable lookup).
    calls: list[str] = []
    resolver = _resolver({"public.test": ["127.0.0.1"]}, calls)
    url = f"http://public.test:{server.port}/blog/article"
    article = fetch_article(url, allow_networks=["127.0.0.1/32"], resolver=resolver)
    assert article.final_url == url
    assert server.requests == [("/blog/article", f"public.test:{server.port}")]
    assert calls == ["public.test"]


def test_unknown_host_is_not_found() -> None:
    resolver = _resolver({}, [])
    message = import_error(
        lambda: fetch_article("http://nowhere.test/", resolver=resolver), "fetch_failed"
    )
    assert "host not found: nowhere.test" in message


def test_backend_refuses_unvetted_hosts() -> None:
    backend = PinnedBackend({"vetted.test": ["127.0.0.1"]})
    with pytest.raises(httpcore.ConnectError, match="not vetted"):
        backend.connect_tcp("other.test", 80)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Server, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=public.test", "-addext", "subjectAltName=DNS:public.test"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = _start(context)
    yield server, cert
    server.shutdown()
    server.server_close()


def test_https_keeps_sni_and_certificate_check_of_the_name(
    tls_server: tuple[_Server, Path],
) -> None:
    server, cert = tls_server
    trust = ssl.create_default_context(cafile=str(cert))
    resolver = _resolver({"public.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}, [])
    url = f"https://public.test:{server.port}/blog/article"
    article = fetch(url, resolver=resolver, ssl_context=trust)
    assert article.title == "The Analytical Engine"
    # Same address, other name: the certificate is checked against the name, not the IP.
    other = f"https://other.test:{server.port}/blog/article"
    message = import_error(
        lambda: fetch(other, resolver=resolver, ssl_context=trust), "fetch_failed"
    )
    assert "invalid TLS certificate of other.test" in message


# -- HTTP errors and network failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable"), [(404, False), (403, False), (410, False), (429, True), (500, True)]
)
def test_http_errors(server: _Server, status: int, retryable: bool) -> None:
    url = f"{base(server)}/status/{status}"
    message = import_error(lambda: fetch(url), "http_error", retryable=retryable)
    assert f"HTTP {status}" in message


def test_503_is_retryable(server: _Server) -> None:
    with pytest.raises(ArticleImportError) as info:
        fetch(f"{base(server)}/status/503")
    assert info.value.retryable and info.value.status_code == 503
    assert str(info.value) == "HTTP 503 Service Unavailable from 127.0.0.1"


def test_read_timeout(server: _Server) -> None:
    started = time.monotonic()
    message = import_error(
        lambda: fetch(f"{base(server)}/slow", read_timeout=0.5), "timeout", retryable=True
    )
    assert "timed out" in message
    assert time.monotonic() - started < 1.4


def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = import_error(
        lambda: fetch(f"http://127.0.0.1:{port}/"), "fetch_failed", retryable=True
    )
    assert "network error" in message


# -- URL syntax and platforms --------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x",
        "http://",
        "not a url",
        "http://user:pass@host/",
        "http://user@host/",
        "",
        "   ",
        "//example.com/a",
        "javascript:alert(1)",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://example.com/\nHost: evil",
        "http://example.com/" + "a" * 2048,
        "http://a.com\\@10.0.0.1/",
    ],
)
def test_malformed_urls(url: str) -> None:
    assert "invalid URL" in import_error(lambda: validate_import_url(url), "invalid_url")
    import_error(lambda: fetch_article(url), "invalid_url")


def test_valid_url_is_returned_stripped() -> None:
    assert validate_import_url("  https://example.com/post?id=1#top ") == (
        "https://example.com/post?id=1#top"
    )
    assert validate_import_url("http://[2606:4700::1]:8080/") == "http://[2606:4700::1]:8080/"


@pytest.mark.parametrize(
    ("url", "platforms"),
    [
        ("https://www.lesswrong.com/posts/abc/title", ("LessWrong",)),
        ("https://lesswrong.com/posts/abc", ("LessWrong",)),
        ("https://forum.effectivealtruism.org/posts/abc", ("EA Forum",)),
        ("https://effectivealtruism.org/articles/x", ()),
        ("https://astralcodexten.substack.com/p/x", ("Substack",)),
        ("https://substack.com/home", ("Substack",)),
        ("https://medium.com/@user/post", ("Medium",)),
        ("https://blog.medium.com/post", ("Medium",)),
        ("https://notmedium.com/post", ()),
        ("https://medium.com.evil.example/post", ()),
        ("https://twitter.com/user/status/1", ("Twitter",)),
        ("https://x.com/user/status/1", ("Twitter",)),
        ("https://box.com/x", ()),
        ("https://www.linkedin.com/pulse/x", ("LinkedIn",)),
        ("https://www.facebook.com/post/1", ("Facebook",)),
        ("https://fb.com/x", ("Facebook",)),
        ("https://LessWrong.COM./posts/x", ("LessWrong",)),
        ("https://example.com/lesswrong.com", ()),
        ("not a url", ()),
    ],
)
def test_detect_platforms(url: str, platforms: tuple[str, ...]) -> None:
    assert detect_platforms(url) == platforms


def test_error_survives_pickling() -> None:
    error = ArticleImportError("http_error", "HTTP 503 from x", retryable=True, status_code=503)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.message, copy.retryable, copy.status_code) == (
        "http_error",
        "HTTP 503 from x",
        True,
        503,
    )
    assert str(copy) == "HTTP 503 from x"
