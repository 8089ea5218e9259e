"""Every outbound HTTP request kakuin makes goes through here: trust-list import and refresh,
an external TSA, other regions' OCSP responders and CRLs.

Why one module: each of those URLs comes from somewhere an attacker may influence (a trust list,
a certificate's AIA/CDP, an operator's typo), and the server runs them from a worker other
requests need. So, always:

- ``http``/``https`` only; anything else (``file:``, ``ftp:``, no host) is refused;
- the host is resolved once and every address checked: loopback, private, link-local,
  multicast, reserved and other non-global targets are refused unless the policy's
  ``allow_networks`` contains them (tests and ``make demo`` allow loopback), and the connection
  goes to the checked address (no second DNS lookup to rebind);
- redirects only to the same host (and port), http -> https allowed, at most ``max_redirects``;
- one deadline for the whole exchange (connect, request, every read), not a per-read timeout a
  slow-drip server could stretch; at most ``max_bytes`` read.

:class:`StatusFetcher` is the verifier's fetch: our own OCSP/CRL URLs answered in process (never
over HTTP from our own workers), other URLs through :func:`fetch` with a process-wide cache that
honours nextUpdate and max-age, and a short memory of hosts that did not answer, so a dead
responder costs one timeout per ``failure_ttl``, not one per verification.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import SplitResult, urljoin, urlsplit

from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import pem

__all__ = [
    "DEFAULT_POLICY",
    "FetchError",
    "FetchPolicy",
    "Response",
    "StatusCache",
    "StatusFetcher",
    "fetch",
    "parse_networks",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache|private)\b", re.IGNORECASE)


class FetchError(Exception):
    """A URL could not be fetched (refused scheme or target, network, HTTP status, size, time);
    the message says which, in one line."""


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch. ``allow_networks``: non-public targets that may be fetched anyway."""

    timeout: float = 5.0
    max_bytes: int = 20 * 1024 * 1024  # a CRL of 100k entries is ~4 MB
    allow_networks: tuple[IpNetwork, ...] = ()
    max_redirects: int = 3

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return ip.is_global and not ip.is_multicast


DEFAULT_POLICY = FetchPolicy()


def parse_networks(value: str | Sequence[str]) -> tuple[IpNetwork, ...]:
    """``"127.0.0.0/8, ::1"`` or a list of CIDRs -> networks (ValueError on a bad one)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(ipaddress.ip_network(i.strip(), strict=False) for i in items if i.strip())


@dataclass(frozen=True)
class Response:
    status: int
    data: bytes
    headers: dict[str, str]


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to an address we checked, verified against the host name of the URL."""

    def __init__(self, address: str, host: str, port: int, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._context = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _resolve(host: str, port: int, policy: FetchPolicy) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host}: {exc}") from None
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not policy.allows(a)]
    if refused or not addresses:
        raise FetchError(f"{host} resolves to {refused[0] if refused else 'nothing'}: a "
                         "loopback, private or link-local target is not fetched (allow it in "
                         "[fetch] allow_networks)")
    return addresses[0]


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise FetchError(f"bad URL {url[:200]!r}: {exc}") from None
    return parts


def _once(url: str, body: bytes | None, headers: dict[str, str], policy: FetchPolicy,
          deadline: float) -> Response:
    parts = _split(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"only http(s) URLs with a host are fetched, not {url[:200]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname
    address = _resolve(host, port, policy)
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"{url[:200]}: no time left ({policy.timeout:g} s)")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = _PinnedHTTPSConnection(address, host, port, remaining,
                                      ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(address, port, timeout=remaining)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    try:
        conn.request("GET" if body is None else "POST", target, body=body,
                     headers={"Host": host_header, "User-Agent": "kakuin", **headers})
        resp = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"{url[:200]}: took longer than {policy.timeout:g} s")
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunk = resp.read1(65536) if resp.status not in _REDIRECTS else b""
            if not chunk:
                break
            size += len(chunk)
            if size > policy.max_bytes:
                raise FetchError(f"{url[:200]}: larger than {policy.max_bytes} bytes")
            chunks.append(chunk)
        return Response(resp.status, b"".join(chunks),
                        {k.lower(): v for k, v in resp.getheaders()})
    except FetchError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"{url[:200]}: {type(exc).__name__}: {exc}"[:400]) from None
    finally:
        conn.close()


def fetch(url: str, body: bytes | None = None, content_type: str | None = None, *,
          policy: FetchPolicy = DEFAULT_POLICY, accept: str | None = None,
          headers: dict[str, str] | None = None) -> Response:
    """GET (``body`` None) or POST ``url`` under ``policy`` (module doc). A 2xx answer, else
    :class:`FetchError`."""
    headers = dict(headers or {})
    if content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    deadline = time.monotonic() + policy.timeout
    current = url
    for _ in range(policy.max_redirects + 1):
        resp = _once(current, body, headers, policy, deadline)
        if resp.status not in _REDIRECTS:
            if not 200 <= resp.status < 300:
                raise FetchError(f"{current[:200]}: HTTP {resp.status}")
            return resp
        location = resp.headers.get("location")
        if not location:
            raise FetchError(f"{current[:200]}: HTTP {resp.status} without Location")
        try:
            target = urljoin(current, location)
        except ValueError:
            raise FetchError(f"{current[:200]}: bad redirect {location[:200]!r}") from None
        old, new = _split(current), _split(target)
        same_host = (old.hostname, old.port) == (new.hostname, new.port) or (
            old.hostname == new.hostname and old.scheme == "http" and new.scheme == "https"
            and old.port in (None, 80) and new.port in (None, 443))
        if not same_host or (old.scheme == "https" and new.scheme != "https"):
            raise FetchError(f"{current[:200]}: redirect to another host or a downgrade "
                             f"refused ({target[:200]})")
        if resp.status == 303:
            body = None
        current = target
    raise FetchError(f"{url[:200]}: more than {policy.max_redirects} redirects")


# -- the verifier's fetch ------------------------------------------------------------------------


def _next_update(data: bytes, is_ocsp: bool) -> datetime | None:
    """nextUpdate of an OCSP response (its first single response) or CRL; None if absent."""
    try:
        if is_ocsp:
            resp = asn1_ocsp.OCSPResponse.load(data)
            if resp["response_status"].native != "successful":
                return None
            singles = resp.basic_ocsp_response["tbs_response_data"]["responses"]
            value = singles[0]["next_update"].native if len(singles) else None
        else:
            if pem.detect(data):
                _, _, data = pem.unarmor(data)
            value = asn1_crl.CertificateList.load(data)["tbs_cert_list"]["next_update"].native
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return value if isinstance(value, datetime) else None


@dataclass
class StatusCache:
    """Process-wide, thread-safe, bounded (LRU) cache of OCSP responses and CRLs by (URL,
    request body), each kept until the earliest of its nextUpdate, the HTTP max-age and
    ``max_seconds``; plus hosts that failed, refused for ``failure_ttl`` seconds."""

    max_entries: int = 512
    max_seconds: float = 300.0
    failure_ttl: float = 30.0
    _entries: OrderedDict[tuple[str, bytes | None], tuple[float, bytes]] = field(
        default_factory=OrderedDict, repr=False)
    _down: dict[str, tuple[float, str]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, key: tuple[str, bytes | None]) -> bytes | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            if hit[0] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: tuple[str, bytes | None], resp: Response, is_ocsp: bool) -> None:
        ttl = self.max_seconds
        control = resp.headers.get("cache-control", "")
        if _NO_CACHE.search(control):
            return
        age = _MAX_AGE.search(control)
        if age:
            ttl = min(ttl, float(age.group(1)))
        next_update = _next_update(resp.data, is_ocsp)
        if next_update is None:
            return  # no nextUpdate: "newer information is always available" (RFC 6960 4.2.2.1)
        ttl = min(ttl, (next_update - datetime.now(UTC)).total_seconds())
        if ttl <= 0:
            return
        with self._lock:
            self._entries[key] = (time.monotonic() + ttl, resp.data)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def host_down(self, host: str) -> str | None:
        with self._lock:
            entry = self._down.get(host)
            if entry is None:
                return None
            if entry[0] <= time.monotonic():
                del self._down[host]
                return None
            return entry[1]

    def mark_down(self, host: str, reason: str) -> None:
        if self.failure_ttl <= 0:
            return
        with self._lock:
            self._down[host] = (time.monotonic() + self.failure_ttl, reason)
            while len(self._down) > self.max_entries:
                self._down.pop(next(iter(self._down)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._down.clear()


#: (url, request body or None) -> the DER our own endpoint would answer, or None: not ours.
OwnStatus = Callable[[str, "bytes | None"], "bytes | None"]


class StatusFetcher:
    """``fetch(url, body, content_type) -> bytes`` for :mod:`signing.verify`: ``own`` first
    (in process, never cached: a revocation here is seen at once), then the cache, then
    :func:`fetch` under ``policy``."""

    def __init__(self, *, own: OwnStatus | None = None, policy: FetchPolicy = DEFAULT_POLICY,
                 cache: StatusCache | None = None) -> None:
        self.own = own
        self.policy = policy
        self.cache = cache if cache is not None else StatusCache()

    def __call__(self, url: str, body: bytes | None = None,
                 content_type: str | None = None) -> bytes:
        if self.own is not None:
            answer = self.own(url, body)
            if answer is not None:
                return answer
        key = (url, body)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        host = (_split(url).hostname or "").lower()
        down = self.cache.host_down(host)
        if down is not None:
            raise FetchError(f"{url[:200]}: not tried again yet, it failed moments ago ({down})")
        try:
            resp = fetch(url, body, content_type, policy=self.policy)
        except FetchError as exc:
            text = str(exc)
            if "HTTP " not in text and "larger than" not in text:  # network-level: host down
                self.cache.mark_down(host, text[:200])
            raise
        self.cache.put(key, resp, is_ocsp=body is not None)
        return resp.data

