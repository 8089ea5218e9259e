"""GET /metrics over real HTTP: off by default, then only to listed addresses or the token;
requests per endpoint by URL rule (fast paths and refusals included), HSM signatures,
verification verdicts, rate-limit refusals."""

from __future__ import annotations

import dataclasses
import re
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from werkzeug.serving import make_server

from kakuin.app import create_app
from kakuin.services import Services
from kakuin.settings import LimitSettings, MetricsSettings, Settings
from tests.test_ratelimit import call, ocsp_request, tsa_query


def serve(settings: Settings, services: Services, **changes: object) -> tuple[str, object]:
    s = dataclasses.replace(settings, base_url=f"http://ns-{secrets.token_hex(6)}", **changes)
    server = make_server("127.0.0.1", 0, create_app(s, services), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.fixture
def metered(settings: Settings, services: Services) -> Iterator[str]:
    url, server = serve(settings, services, metrics=MetricsSettings(enabled=True),
                        limits=LimitSettings(tsa="3/minute"))
    yield url
    server.shutdown()  # type: ignore[attr-defined]


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(url: str) -> str:
    status, headers, body = call(url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return body.decode()


def test_metrics_are_off_by_default(live_server) -> None:  # type: ignore[no-untyped-def]
    assert call(live_server.url + "/metrics")[0] == 404


def test_only_listed_addresses_or_the_token(settings: Settings, services: Services,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = secrets.token_urlsafe(16)
    monkeypatch.setenv("KAKUIN_TEST_METRICS_TOKEN", token)
    url, server = serve(settings, services, metrics=MetricsSettings(
        enabled=True, allow_from=("192.0.2.0/24",), token_env="KAKUIN_TEST_METRICS_TOKEN"))
    try:
        status, headers, _ = call(url + "/metrics")
        assert status == 403 and headers["Content-Type"] == "application/problem+json"
        assert call(url + "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 403
        ok = call(url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert ok[0] == 200 and b"kakuin_http_requests_total" in ok[2]
    finally:
        server.shutdown()  # type: ignore[attr-defined]


def test_requests_by_endpoint_fast_paths_hsm_and_refusals(metered: str, home) -> None:  # type: ignore[no-untyped-def]
    import base64
    import urllib.parse

    before = scrape(metered)
    der = ocsp_request(home)
    call(metered + "/ocsp", data=der)
    call(metered + "/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe=""))
    for _ in range(4):  # the fourth is refused by the 3/minute TSA limit
        call(metered + "/tsa", data=tsa_query())
    call(metered + "/healthz")
    call(metered + f"/no/such/{secrets.token_hex(4)}")
    after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    total = "kakuin_http_requests_total"
    assert delta(total, endpoint="/ocsp", method="POST", status="200") == 1
    assert delta(total, endpoint="/ocsp/<path:encoded>", method="GET", status="200") == 1
    assert delta(total, endpoint="/tsa", method="POST", status="200") == 3
    assert delta(total, endpoint="<rate-limited:tsa>", method="POST", status="200") == 1
    assert delta(total, endpoint="/healthz", method="GET", status="200") == 1
    assert delta(total, endpoint="<unmatched>", method="GET", status="404") == 1
    assert delta("kakuin_rate_limited_total", limit="tsa") == 1
    assert delta("kakuin_http_request_duration_seconds_count", endpoint="/tsa") == 3
    # Three timestamps and the health check signed in the HSM (ECDSA P-256 keys).
    assert delta("kakuin_hsm_sign_duration_seconds_count", algorithm="ECDSA-P256") >= 4
    assert "/no/such" not in after  # raw paths never become labels


def test_verification_verdicts_are_counted(metered: str) -> None:
    before = scrape(metered)
    status, _, _ = call(metered + "/api/v1/verify", data=b"%PDF-1.7 not really",
                          headers={"Content-Type": "application/pdf"})
    assert status in (413, 422)
    after = scrape(metered)
    name = "kakuin_verifications_total"
    assert sample(after, name, indication="REFUSED") - sample(before, name,
                                                              indication="REFUSED") == 1


def test_cli_import_leaves_prometheus_client_unloaded() -> None:
    """``kakuin serve`` sets PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported;
    an import from kakuin.cli's module level would silently turn multiprocess mode off."""
    code = "import sys, kakuin.cli; assert 'prometheus_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
