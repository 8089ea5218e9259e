"""Prometheus metrics: requests and latency per endpoint, rate-limit refusals, verification
verdicts, HSM signing, scheduler runs; served on GET /metrics (off unless enabled).

Under ``kakuin serve`` the metrics are in multiprocess mode: ``serve`` sets
PROMETHEUS_MULTIPROC_DIR before prometheus_client is first imported (the value class is
chosen at import), so this module must not be imported by anything ``kakuin.cli`` imports
at module level. Endpoints are labelled by Flask URL rule (``/ocsp/<path:encoded>``), never
the raw path, so a scanner cannot blow up the number of series.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from hsm.api import HashAlg, KeyRef, SignScheme
from hsm.errors import HsmError
from hsm.pkcs11 import Pkcs11KeyManager
from signing.service import SigningService
from signing.verify import Report

ENDPOINT_KEY = "kakuin.endpoint"
"""WSGI environ key: the endpoint label (Flask URL rule, or set by a layer below Flask)."""
UNMATCHED = "<unmatched>"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("kakuin_http_requests", "HTTP requests answered",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("kakuin_http_request_duration_seconds",
                    "Time to produce the response (body iterable returned)",
                    ["endpoint"], buckets=_LATENCY_BUCKETS)
RATE_LIMITED = Counter("kakuin_rate_limited", "Requests refused by a rate limit", ["limit"])
RATE_LIMIT_ERRORS = Counter("kakuin_rate_limit_storage_errors",
                            "Rate-limit storage unreachable (the request was let through)")
VERIFICATIONS = Counter("kakuin_verifications", "Document verifications by verdict",
                        ["indication", "document_type"])
HSM_SIGN = Histogram("kakuin_hsm_sign_duration_seconds", "One HSM signature",
                     ["algorithm"], buckets=_LATENCY_BUCKETS)
HSM_ERRORS = Counter("kakuin_hsm_sign_errors", "HSM signatures that failed", ["algorithm"])
SCHEDULER_RUNS = Counter("kakuin_scheduler_runs", "Scheduled maintenance runs", ["outcome"])
SCHEDULER_DURATION = Histogram("kakuin_scheduler_run_duration_seconds",
                               "One scheduled maintenance run", buckets=_LATENCY_BUCKETS)

TRANSPARENCY_INCONSISTENCIES = Counter(
    "kakuin_transparency_inconsistencies",
    "Peer transparency logs caught rewriting their history (kakuin.witness)", ["peer"])


def record_transparency_inconsistency(peer: str) -> None:
    TRANSPARENCY_INCONSISTENCIES.labels(peer=peer[:64]).inc()


def record_verification(indication: str, document_type: str | None = None) -> None:
    """Count one verification verdict (anonymous traffic is counted here, not stored)."""
    VERIFICATIONS.labels(indication=indication or "unknown",
                         document_type=document_type or "unknown").inc()


def record_rate_limited(limit: str) -> None:
    RATE_LIMITED.labels(limit=limit).inc()


def record_scheduler_run(ok: bool, seconds: float) -> None:
    SCHEDULER_RUNS.labels(outcome="ok" if ok else "error").inc()
    SCHEDULER_DURATION.observe(seconds)


class MeteredKeyManager(Pkcs11KeyManager):
    """The PKCS#11 key manager with every signature timed and failures counted. Composed here
    because ``hsm`` imports nothing of ours; every signing path goes through sign_digest."""

    def sign_digest(
        self, key: KeyRef, digest: bytes, hash_alg: HashAlg, scheme: SignScheme
    ) -> bytes:
        algorithm = key.algorithm.value
        start = time.perf_counter()
        try:
            sig = super().sign_digest(key, digest, hash_alg, scheme)
        except HsmError:
            HSM_ERRORS.labels(algorithm=algorithm).inc()
            raise
        HSM_SIGN.labels(algorithm=algorithm).observe(time.perf_counter() - start)
        return sig


class MetricsMiddleware:
    """Outermost WSGI layer: counts and times every request, the OCSP/TSA fast paths and
    rate-limit refusals included (they never reach Flask)."""

    FAST_PATHS: ClassVar[dict[tuple[str, str], str]] = {
        ("POST", "/ocsp"): "/ocsp", ("POST", "/ocsp/"): "/ocsp", ("POST", "/tsa"): "/tsa"}

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start = time.perf_counter()
        status: list[str] = ["500"]

        def capture(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, capture)
        finally:
            method = environ.get("REQUEST_METHOD", "")
            endpoint = environ.get(ENDPOINT_KEY) or self.FAST_PATHS.get(
                (method, environ.get("PATH_INFO", "")), UNMATCHED)
            if method not in ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"):
                method = "other"
            REQUESTS.labels(endpoint=endpoint, method=method, status=status[0]).inc()
            LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - start)


def child_exit(_server: Any, worker: Any) -> None:
    """gunicorn child_exit hook: fold a dead worker's live gauges away (multiprocess docs)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)


def _allowed(remote: str | None, networks: tuple[str, ...]) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    for net in networks:
        try:
            if address in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


def init_app(app: Flask, enabled: bool, allow_from: tuple[str, ...], token_env: str) -> None:
    """Label requests with their URL rule and, when enabled, serve GET /metrics."""

    @app.before_request
    def label_endpoint() -> None:
        rule = request.url_rule
        request.environ[ENDPOINT_KEY] = rule.rule if rule is not None else UNMATCHED

    if not enabled:
        return

    @app.get("/metrics")
    def metrics() -> Any:
        from kakuin.app import problem

        token = os.environ.get(token_env, "")
        supplied = request.headers.get("Authorization", "")
        by_token = bool(token) and hmac.compare_digest(supplied.encode(),
                                                       f"Bearer {token}".encode())
        if not by_token and not _allowed(request.remote_addr, allow_from):
            return problem(403, "metrics/forbidden", "Forbidden",
                           "metrics are served only to the addresses or token in settings")
        registry: CollectorRegistry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class MeteredSigningService(SigningService):
    """The sealing service with every verification verdict counted, whoever calls it (API,
    page, CLI). Composed here because ``signing`` may not import ``kakuin``."""

    def verify(self, *args: Any, **kwargs: Any) -> Report:
        try:
            report = super().verify(*args, **kwargs)
        except Exception:
            record_verification("REFUSED")
            raise
        record_verification(report.indication, report.document_type)
        return report
