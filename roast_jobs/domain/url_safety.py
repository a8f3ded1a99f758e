"""Address checks for article import: URL syntax, SSRF refusal, connections pinned to vetted IPs.

An imported URL is user input that a worker fetches from inside the network, so every hop (the
first URL and each redirect target) is resolved once, every resolved address is checked, and the
connection then goes to one of exactly those addresses (``PinnedTransport``). Re-resolving at
connect time would let a DNS answer change between the check and the connect (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the host's addresses as strings, like the ones getaddrinfo returns.
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
ALLOW_PRIVATE_HINT = "set ROAST_JOBS_IMPORT_ALLOW_PRIVATE=1 to allow it"

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class ArticleImportError(Exception):
    """An import failed: ``reason`` is a short code, ``retryable`` whether trying again may help.

    Messages carry the words RoastMyPost's legacy retry classifier looks for, which checks its
    non-retryable words first: permanent failures say "invalid", "forbidden" or "not found",
    transient ones "timed out", "network", or the status code (429, 5xx), and name only the host
    (a URL's path could contain "404" or "invalid").
    """

    def __init__(
        self, reason: str, message: str, retryable: bool = False, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.status_code = status_code

    def __reduce__(self) -> tuple[object, ...]:
        # Celery may pickle the exception; the default reduce would pass only the message.
        return (type(self), (self.reason, self.message, self.retryable, self.status_code))


@dataclass(frozen=True)
class Target:
    """A parsed, syntactically valid import URL."""

    url: httpx.URL
    host: str  # as httpx sends it to the connection pool: lower-case, IDNA-encoded, no brackets
    port: int


def validate_import_url(url: str) -> str:
    """Check ``url`` without any network access: http(s), a host, no credentials, <= 2048 chars.

    Returns the URL without surrounding whitespace; raises ``ArticleImportError("invalid_url")``.
    """
    parse_import_url(url)
    return url.strip()


def parse_import_url(url: str) -> Target:
    # httpx parses the URL that is later requested, so the check and the request cannot disagree
    # about which host is meant (e.g. "http://a.com\@10.0.0.1/").
    if not isinstance(url, str):
        raise _invalid(repr(url), "not a string")
    text = url.strip()
    shown = text if len(text) <= 100 else text[:100] + "..."
    if not text:
        raise _invalid("''", "empty")
    if len(text) > MAX_URL_LENGTH:
        raise _invalid(repr(shown), f"longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise _invalid(repr(shown), "contains whitespace or control characters")
    try:
        parsed = httpx.URL(text)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise _invalid(repr(shown), str(exc)) from None
    if parsed.scheme not in ("http", "https"):
        raise _invalid(repr(shown), "only http and https URLs can be imported")
    if not host:
        raise _invalid(repr(shown), "no host")
    if "%" in host:
        raise _invalid(repr(shown), "malformed host")
    if parsed.userinfo:
        raise _invalid(repr(shown), "credentials (user:password@) are not allowed")
    if port is not None and not 0 < port < 65536:
        raise _invalid(repr(shown), f"port {port} is out of range")
    return Target(parsed, host, port or (443 if parsed.scheme == "https" else 80))


def _invalid(shown: str, detail: str) -> ArticleImportError:
    return ArticleImportError("invalid_url", f"invalid URL {shown}: {detail}")


def address_problem(address: str | IPAddress) -> str | None:
    """Why ``address`` must not be fetched ("loopback", "private", ...), or None if it is public."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv6 forms that reach an IPv4 address are judged by that address (3.11's ipaddress
        # calls ::ffff:127.0.0.1 neither loopback nor private, and 2002::/16 global).
        if ip.ipv4_mapped is not None:
            return _embedded(ip.ipv4_mapped, "IPv4-mapped")
        if ip in _NAT64:
            return _embedded(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64")
        if ip.sixtofour is not None and (problem := _embedded(ip.sixtofour, "6to4")):
            return problem
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        # e.g. 100.64.0.0/10 (carrier-grade NAT), which is neither private nor global
        ("not globally routable", not ip.is_global),
    )
    return next((label for label, hit in checks if hit), None)


def _embedded(ip: ipaddress.IPv4Address, kind: str) -> str | None:
    problem = address_problem(ip)
    return f"{problem} ({kind} {ip})" if problem else None


def default_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from ``socket.getaddrinfo``, in its order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def vet_host(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolver: Resolver | None = None,
    allow_networks: Iterable[IPNetwork] = (),
) -> list[str]:
    """Resolve ``host`` and return its addresses, refusing it if ANY address is not public.

    ``allow_networks`` lists networks accepted although not public (e.g. an intranet wiki);
    ``allow_private`` accepts every address.
    """
    networks = tuple(allow_networks)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [host]
    else:
        try:
            addresses = list(dict.fromkeys((resolver or default_resolver)(host, port)))
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise ArticleImportError(
                    "fetch_failed",
                    f"network error: temporary failure resolving {host} ({exc.strerror})",
                    retryable=True,
                ) from None
            raise ArticleImportError(
                "fetch_failed", f"host not found: {host} does not resolve ({exc.strerror})"
            ) from None
        except OSError as exc:
            raise ArticleImportError(
                "fetch_failed", f"network error resolving {host}: {exc}", retryable=True
            ) from None
        if not addresses:
            raise ArticleImportError("fetch_failed", f"host not found: {host} has no address")
    for address in addresses:
        ip = ipaddress.ip_address(address)
        problem = address_problem(ip)
        if problem and not allow_private and not any(ip in net for net in networks):
            shown = f"address {address}" if literal else f"address {address} of {host}"
            raise ArticleImportError(
                "private_address", f"forbidden: {shown} is {problem}; {ALLOW_PRIVATE_HINT}"
            )
    return addresses


def parse_networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in networks)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects to the vetted addresses of a host instead of resolving its name again.

    httpcore still does TLS with the host name (SNI and certificate check) and httpx still sends
    it in the Host header, so only the TCP destination changes. Hosts not in ``pins`` are refused:
    nothing reaches the network unvetted.
    """

    def __init__(self, pins: Mapping[str, Sequence[str]]) -> None:
        self._pins = pins
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self._pins.get(host)
        if not addresses:
            raise httpcore.ConnectError(f"{host} was not vetted; refusing to connect")
        last: Exception | None = None
        for address in addresses:  # like a browser, try the next address if one is down
            try:
                return self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not used for article import")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections go to ``pins[host]`` (filled in by the caller per hop).

    It never uses proxies or the environment (no HTTP_PROXY, no .netrc).
    """

    def __init__(
        self, pins: Mapping[str, Sequence[str]], *, verify: ssl.SSLContext | bool = True
    ) -> None:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, trust_env=False)
        # httpx has no public hook for the network backend; replacing the pool it built is the
        # smallest change (HTTPTransport only talks to self._pool).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=10,
            max_keepalive_connections=5,
            network_backend=PinnedBackend(pins),
        )
