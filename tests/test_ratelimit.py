"""Rate limits over real HTTP: each endpoint refuses in its own protocol (429 problem+json,
OCSP tryLater, TSA rejection) with Retry-After; per token on the API; X-Forwarded-For only
from trusted proxies; memory and Redis storage (Redis shared by two app instances, as by two
workers); an unreachable storage lets requests through."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from werkzeug.serving import make_server

from kakuin.app import create_app
from kakuin.services import Services
from kakuin.settings import LimitSettings, Settings
from signing.tsa import TimeStampResponse

REDIS_URL = "redis://127.0.0.1:6379/0"
TIGHT = LimitSettings(verify="2/minute", ocsp="2/minute", tsa="2/minute",
                      csc_info="2/minute", transparency="2/minute", api="2/minute")


def serve(settings: Settings, services: Services, limits: LimitSettings,
          namespace: str | None = None) -> tuple[str, object]:
    """The app with these limits on a real loopback socket; namespace isolates Redis keys."""
    s = dataclasses.replace(settings, limits=limits,
                            base_url=namespace or f"http://ns-{secrets.token_hex(6)}")
    server = make_server("127.0.0.1", 0, create_app(s, services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.fixture
def limited(settings: Settings, services: Services) -> Iterator[str]:
    url, server = serve(settings, services, TIGHT)
    yield url
    server.shutdown()  # type: ignore[attr-defined]


def call(url: str, data: bytes | None = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def ocsp_request(home: Path) -> bytes:
    pki = home / "pki"
    issuer = x509.load_pem_x509_certificate((pki / "kakuin-issuing-ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "kakuin-issuing-ca-tsa.pem").read_bytes())
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256())
    return builder.build().public_bytes(serialization.Encoding.DER)


def tsa_query() -> bytes:
    return tsp.TimeStampReq({
        "version": 1,
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": secrets.token_bytes(32)},
        "cert_req": True,
    }).dump()


def assert_problem_429(status: int, headers: dict[str, str], body: bytes) -> dict[str, object]:
    import json

    assert status == 429, body
    assert headers["Content-Type"] == "application/problem+json"
    assert int(headers["Retry-After"]) >= 1
    problem = json.loads(body)
    assert problem["type"] == "urn:kakuin:problem:rate-limited"
    assert problem["status"] == 429 and problem["request_id"] == headers["X-Request-ID"]
    return problem


def test_verify_page_and_api_share_one_limit(limited: str) -> None:
    assert call(limited + "/verify")[0] == 200
    first = call(limited + "/api/v1/verify", data=b"not a sealed document")
    assert first[0] not in (429, 500)
    assert_problem_429(*call(limited + "/api/v1/verify", data=b"again"))
    assert_problem_429(*call(limited + "/verify"))
    # Not limited: published CA certificates.
    assert call(limited + "/pki/kakuin-root-ca.crt")[0] == 200


def test_ocsp_fast_path_and_get_answer_try_later(limited: str, home: Path) -> None:
    import base64
    import urllib.parse

    der = ocsp_request(home)
    ok = call(limited + "/ocsp", data=der, headers={"Content-Type": "application/ocsp-request"})
    assert x509_ocsp.load_der_ocsp_response(ok[2]).response_status is (
        x509_ocsp.OCSPResponseStatus.SUCCESSFUL)
    encoded = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
    assert call(limited + "/ocsp/" + encoded)[0] == 200  # GET counts in the same bucket
    for refused in (call(limited + "/ocsp", data=der), call(limited + "/ocsp/" + encoded)):
        status, headers, body = refused
        assert status == 200 and headers["Content-Type"] == "application/ocsp-response"
        assert int(headers["Retry-After"]) >= 1
        assert x509_ocsp.load_der_ocsp_response(body).response_status is (
            x509_ocsp.OCSPResponseStatus.TRY_LATER)


def test_tsa_fast_path_answers_rejection(limited: str) -> None:
    headers = {"Content-Type": "application/timestamp-query"}
    for _ in range(2):
        status, _, body = call(limited + "/tsa", data=tsa_query(), headers=headers)
        assert TimeStampResponse.load(body)["status"]["status"].native == "granted"
    status, resp_headers, body = call(limited + "/tsa", data=tsa_query(), headers=headers)
    assert status == 200 and resp_headers["Content-Type"] == "application/timestamp-reply"
    assert int(resp_headers["Retry-After"]) >= 1
    reply = TimeStampResponse.load(body)
    assert reply["status"]["status"].native == "rejection"
    assert "Too many requests" in reply["status"]["status_string"].native[0]
    assert not reply["time_stamp_token"]


def test_csc_info_refusal_is_also_csc_error_json(limited: str) -> None:
    for _ in range(2):
        assert call(limited + "/csc/v2/info", data=b"{}", method="POST")[0] == 200
    problem = assert_problem_429(*call(limited + "/csc/v2/info", data=b"{}", method="POST"))
    assert problem["error"] == "rate_limited" and problem["error_description"]


def test_transparency_proofs_are_limited_per_address(limited: str) -> None:
    """Tree heads and proofs are public and cost work that grows with the log."""
    url = limited + "/transparency/proof/consistency?first=1&second=1"
    for _ in range(2):
        assert call(url)[0] not in (429, 500)
    assert_problem_429(*call(url))
    assert_problem_429(*call(limited + "/transparency/sth"))


def test_api_is_limited_per_token(limited: str) -> None:
    """Counted by a hash of the bearer token, valid or not: one client's burst does not
    refuse another's."""
    url = limited + "/api/v1/seal-requests/1"
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    for _ in range(2):
        assert call(url, headers={"Authorization": f"Bearer {first}"})[0] == 401
    assert_problem_429(*call(url, headers={"Authorization": f"Bearer {first}"}))
    assert call(url, headers={"Authorization": f"Bearer {second}"})[0] == 401


def test_forwarded_for_ignored_unless_from_trusted_proxy(settings: Settings,
                                                         services: Services) -> None:
    url, server = serve(settings, services, TIGHT)
    try:  # default: the header is the client's word, so it cannot buy a fresh counter
        for i in range(2):
            call(url + "/verify", headers={"X-Forwarded-For": f"192.0.2.{i}"})
        assert call(url + "/verify", headers={"X-Forwarded-For": "192.0.2.9"})[0] == 429
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    trusted = dataclasses.replace(TIGHT, trusted_proxies=("127.0.0.1",))
    url, server = serve(settings, services, trusted)
    try:  # behind the trusted front, each forwarded client has its own counter
        for i in range(3):
            assert call(url + "/verify", headers={"X-Forwarded-For": f"192.0.2.{i}"})[0] == 200
        # The nearest untrusted hop counts, not what the client prepended.
        for _ in range(2):
            call(url + "/verify", headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.7"})
        refused = call(url + "/verify", headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.7"})
        assert refused[0] == 429
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_disabled_limits_refuse_nothing(settings: Settings, services: Services) -> None:
    url, server = serve(settings, services, dataclasses.replace(TIGHT, enabled=False))
    try:
        assert all(call(url + "/verify")[0] == 200 for _ in range(4))
    finally:
        server.shutdown()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def test_redis_counters_are_shared_between_instances(settings: Settings, services: Services,
                                                     redis_url: str) -> None:
    """Two app instances (as two workers, or two nodes) with one namespace share counters."""
    limits = dataclasses.replace(TIGHT, storage_url=redis_url)
    namespace = f"http://redis-test-{secrets.token_hex(6)}"
    (one, s1), (two, s2) = (serve(settings, services, limits, namespace) for _ in range(2))
    try:
        assert call(one + "/verify")[0] == 200
        assert call(two + "/verify")[0] == 200
        assert_problem_429(*call(one + "/verify"))
        assert_problem_429(*call(two + "/verify"))
        other, s3 = serve(settings, services, limits)  # another instance: its own counters
        try:
            assert call(other + "/verify")[0] == 200
        finally:
            s3.shutdown()  # type: ignore[attr-defined]
    finally:
        s1.shutdown()  # type: ignore[attr-defined]
        s2.shutdown()  # type: ignore[attr-defined]


def test_unreachable_storage_lets_requests_through(settings: Settings,
                                                   services: Services) -> None:
    from kakuin import metrics

    before = metrics.RATE_LIMIT_ERRORS._value.get()
    dead = dataclasses.replace(TIGHT, storage_url="redis://127.0.0.1:1/0")
    url, server = serve(settings, services, dead)
    try:
        assert all(call(url + "/verify")[0] == 200 for _ in range(4))
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert metrics.RATE_LIMIT_ERRORS._value.get() > before


def test_bad_limit_settings_are_one_clear_error(settings: Settings) -> None:
    from kakuin.ratelimit import RateLimits
    from kakuin.settings import SettingsError

    with pytest.raises(SettingsError, match="limits"):
        RateLimits(dataclasses.replace(TIGHT, verify="five per minute"), "x")
    with pytest.raises(SettingsError, match="trusted_proxies"):
        RateLimits(dataclasses.replace(TIGHT, trusted_proxies=("not-an-address",)), "x")
    with pytest.raises(SettingsError, match="storage_url"):
        RateLimits(dataclasses.replace(TIGHT, storage_url="nosuch://x"), "x")


def test_settings_from_file_and_environment(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from kakuin.settings import SettingsError, load_settings

    (tmp_path / "kakuin.toml").write_text(
        '[limits]\nverify = "1/second"\ntrusted_proxies = ["10.0.0.0/8"]\n'
        '[metrics]\nenabled = true\n')
    s = load_settings(tmp_path)
    assert s.limits.verify == "1/second" and s.limits.trusted_proxies == ("10.0.0.0/8",)
    assert s.limits.storage_url == "memory://" and s.metrics.enabled
    assert s.worker_class == "gevent"
    monkeypatch.setenv("KAKUIN_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("KAKUIN_RATE_LIMITS", "0")
    monkeypatch.setenv("KAKUIN_METRICS", "off")
    s = load_settings(tmp_path)
    assert s.limits.storage_url == REDIS_URL and not s.limits.enabled and not s.metrics.enabled
    monkeypatch.setenv("KAKUIN_WORKER_CLASS", "eventlet")
    with pytest.raises(SettingsError, match="worker_class"):
        load_settings(tmp_path)
