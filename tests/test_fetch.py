"""Outbound fetches (signing/fetch.py) against a real HTTP server on loopback: targets, redirects,
size and time limits, the status cache, and the CLI's one-line refusals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from kakuin.cli import main
from signing import fetch as outbound

LOOPBACK = outbound.FetchPolicy(allow_networks=outbound.parse_networks("127.0.0.0/8,::1"),
                                timeout=2.0, max_bytes=64 * 1024)


def _crl(next_update: timedelta) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other region CA")])
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name)
           .last_update(now - timedelta(minutes=1)).next_update(now + next_update)
           .sign(key, hashes.SHA256()))
    return crl.public_bytes(serialization.Encoding.DER)


class Site:
    """A loopback server whose routes the tests set; counts hits per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], Any]] = {}
        self.hits: dict[str, int] = {}
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def app(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        self.hits[path] = self.hits.get(path, 0) + 1
        status, headers, body = self.routes.get(path, (404, {}, b"no"))
        start_response(f"{status} X", list(headers.items()))
        return body() if callable(body) else [body]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.server.shutdown()


def test_schemes_and_private_targets_are_refused(site: Site) -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x.crl", "gopher://x", "http://",
                "http:///nohost", "https://[::1", "javascript:alert(1)"):
        with pytest.raises(outbound.FetchError, match=r"only http|bad URL|cannot resolve"):
            outbound.fetch(url)
    # Loopback, private, link-local (cloud metadata), shared, mapped: refused by default,
    # without a connection (literal addresses need no DNS).
    for url in (f"{site.url}/x", "http://10.0.0.1/x", "http://192.168.1.1/x",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/x",
                "http://100.64.0.1/x", "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x"):
        with pytest.raises(outbound.FetchError, match="loopback, private or link-local"):
            outbound.fetch(url, policy=outbound.FetchPolicy(timeout=1))
    assert site.hits.get("/x") is None


def test_redirects_only_to_the_same_host(site: Site) -> None:
    site.routes["/list"] = (200, {"Content-Type": "application/json"}, b"{}")
    site.routes["/moved"] = (302, {"Location": "/list"}, b"")
    site.routes["/away"] = (302, {"Location": f"http://localhost:{site.server.server_port}/list"},
                            b"")
    site.routes["/meta"] = (301, {"Location": "http://169.254.169.254/latest"}, b"")
    site.routes["/file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    site.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    assert outbound.fetch(f"{site.url}/moved", policy=LOOPBACK).data == b"{}"
    for path in ("/away", "/meta", "/file"):
        with pytest.raises(outbound.FetchError, match="another host"):
            outbound.fetch(f"{site.url}{path}", policy=LOOPBACK)
    with pytest.raises(outbound.FetchError, match="more than 3 redirects"):
        outbound.fetch(f"{site.url}/loop", policy=LOOPBACK)


def test_size_and_time_limits(site: Site) -> None:
    site.routes["/big"] = (200, {}, b"x" * (LOOPBACK.max_bytes + 1))

    def trickle() -> Iterator[bytes]:
        for _ in range(100):  # a byte every 0.1 s: each read is quick, the whole is not
            time.sleep(0.1)
            yield b"x"

    site.routes["/slow"] = (200, {}, trickle)
    site.routes["/gone"] = (500, {}, b"oops")
    with pytest.raises(outbound.FetchError, match="larger than"):
        outbound.fetch(f"{site.url}/big", policy=LOOPBACK)
    t0 = time.monotonic()
    with pytest.raises(outbound.FetchError, match="longer than"):
        outbound.fetch(f"{site.url}/slow", policy=LOOPBACK)
    assert time.monotonic() - t0 < LOOPBACK.timeout + 1
    with pytest.raises(outbound.FetchError, match="HTTP 500"):
        outbound.fetch(f"{site.url}/gone", policy=LOOPBACK)


def test_status_cache_honours_max_age_and_next_update(site: Site) -> None:
    site.routes["/fresh.crl"] = (200, {"Cache-Control": "max-age=60"}, _crl(timedelta(hours=1)))
    site.routes["/nostore.crl"] = (200, {"Cache-Control": "no-store"}, _crl(timedelta(hours=1)))
    site.routes["/stale.crl"] = (200, {}, _crl(timedelta(seconds=-5)))
    site.routes["/short.crl"] = (200, {"Cache-Control": "max-age=1"}, _crl(timedelta(hours=1)))
    fetcher = outbound.StatusFetcher(policy=LOOPBACK,
                                     cache=outbound.StatusCache(max_entries=2, failure_ttl=30))
    for path, expected in (("/fresh.crl", 1), ("/nostore.crl", 3), ("/stale.crl", 3)):
        for _ in range(3):
            fetcher(f"{site.url}{path}")
        assert site.hits[path] == expected, path
    fetcher(f"{site.url}/short.crl")
    time.sleep(1.1)
    fetcher(f"{site.url}/short.crl")
    assert site.hits["/short.crl"] == 2
    # Bounded: two entries at most, the least recently used dropped.
    site.routes["/other.crl"] = (200, {"Cache-Control": "max-age=60"}, _crl(timedelta(hours=1)))
    fetcher(f"{site.url}/other.crl")
    fetcher(f"{site.url}/fresh.crl")
    assert site.hits["/fresh.crl"] == 2


def test_a_dead_host_is_not_waited_for_again(site: Site) -> None:
    dead = "http://127.0.0.1:9/ocsp"  # discard port: connection refused
    cache = outbound.StatusCache(failure_ttl=30)
    fetcher = outbound.StatusFetcher(policy=LOOPBACK, cache=cache)
    with pytest.raises(outbound.FetchError):
        fetcher(dead, b"req", "application/ocsp-request")
    with pytest.raises(outbound.FetchError, match="not tried again yet"):
        fetcher(dead, b"req", "application/ocsp-request")
    # Our own URLs never go out: the in-process answer wins.
    own = outbound.StatusFetcher(own=lambda url, body: b"ours" if "/ocsp" in url else None,
                                 policy=LOOPBACK, cache=cache)
    assert own(dead, b"req", "application/ocsp-request") == b"ours"


def test_cli_trust_import_refusals_are_one_line(home: Path) -> None:
    runner = CliRunner()
    pin = "0" * 64
    for source, says in (("file:///etc/passwd", "only http(s) URLs or a local file path"),
                         ("ftp://example.com/list", "only http(s) URLs or a local file path"),
                         ("http://", "cannot fetch"),
                         ("http://169.254.169.254/latest", "loopback, private or link-local"),
                         (str(home / "no-such-list.json"), "cannot read")):
        out = runner.invoke(main, ["--home", str(home), "trust", "import", source,
                                   "--pin", pin])
        assert out.exit_code == 1, (source, out.output)
        assert "Traceback" not in out.output, (source, out.output)
        assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
        lines = [line for line in out.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], out.output
