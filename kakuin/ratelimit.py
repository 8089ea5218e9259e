"""Rate limits on the public endpoints and per API token, as one WSGI layer in front of
everything (the OCSP and TSA fast paths answer below Flask, so a Flask extension would miss
them). Counting is the ``limits`` library's (Flask-Limiter's engine): in memory by default,
Redis when ``limits.storage_url`` / KAKUIN_REDIS_URL says so. Moving windows: exact (no
double burst at a window edge) and measured as cheap as the approximate ones (memory ~15 µs,
Redis one round trip).

A refusal speaks the protocol of the endpoint: OCSP ``tryLater``, an RFC 3161 ``rejection``
with the reason in statusString, otherwise 429 problem+json; all carry Retry-After.
If the storage is unreachable the request goes through (availability first), is counted in
metrics and logged, and the storage is left alone for a few seconds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from ca import ocsp
from kakuin import metrics
from kakuin.settings import LimitSettings, SettingsError
from signing.tsa import TimeStampResponse

log = logging.getLogger("kakuin.ratelimit")
PROBLEM_TYPE = "urn:kakuin:problem:rate-limited"
BUCKETS = ("verify", "ocsp", "tsa", "csc_info", "transparency", "api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_PAUSE_AFTER_ERROR = 5.0
"""Seconds the storage is not asked again after it failed (a dead Redis costs no latency)."""


def bucket_of(method: str, path: str) -> str | None:
    """Which limit a request counts against; None: not limited (CRLs, certificates, ...)."""
    if path == "/ocsp" or path.startswith("/ocsp/"):
        return "ocsp"
    if path == "/tsa":
        return "tsa"
    if path in ("/verify", "/api/v1/verify", "/api/v1/conformance/producer"):
        return "verify"  # anonymous document checks: one budget per address
    if path in ("/csc/v1/info", "/csc/v2/info"):
        return "csc_info"
    if path == "/transparency" or path.startswith("/transparency/"):
        return "transparency"
    if path.startswith(("/api/", "/csc/")):
        return "api"
    return None


@dataclass(frozen=True)
class Refusal:
    bucket: str
    retry_after: int


class RateLimits:
    """The limits of one instance and where they are counted; safe to share between threads."""

    def __init__(self, settings: LimitSettings, namespace: str) -> None:
        self.enabled = settings.enabled
        try:
            self.items: dict[str, list[RateLimitItem]] = {
                name: parse_many(getattr(settings, name)) for name in BUCKETS}
        except ValueError as exc:
            raise SettingsError(f"[limits]: {exc}") from exc
        options: dict[str, float | str | bool] = {}
        if settings.storage_url.startswith(("redis://", "rediss://", "unix://")):
            options = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
        try:
            self.storage = storage_from_string(settings.storage_url, **options)
        except Exception as exc:
            raise SettingsError(f"limits.storage_url: {exc}") from exc
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.namespace = hashlib.sha256(namespace.encode()).hexdigest()[:12]
        self.storage_url = settings.storage_url
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._networks = []
        for entry in settings.trusted_proxies:
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise SettingsError(f"limits.trusted_proxies: {exc}") from exc

    def check(self, bucket: str, client: str) -> Refusal | None:
        """Count one request of ``client`` against ``bucket``; a Refusal if over a limit."""
        if not self.enabled or time.monotonic() < self._paused_until:
            return None
        try:
            for item in self.items[bucket]:
                if not self.limiter.hit(item, self.namespace, bucket, client):
                    reset = self.limiter.get_window_stats(
                        item, self.namespace, bucket, client).reset_time
                    return Refusal(bucket, max(1, math.ceil(reset - time.time())))
        except Exception as exc:  # the storage, not the request, failed: let it through
            metrics.RATE_LIMIT_ERRORS.inc()
            with self._lock:
                if time.monotonic() >= self._paused_until:
                    log.warning("rate-limit storage failed; limits paused for %.0f s: %s",
                                _PAUSE_AFTER_ERROR, exc)
                self._paused_until = time.monotonic() + _PAUSE_AFTER_ERROR
        return None

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_address(self, environ: dict[str, Any]) -> str:
        """The peer address; behind a trusted proxy, the nearest X-Forwarded-For hop that is
        not itself a trusted proxy (the left-most entries are whatever the client wrote)."""
        remote = str(environ.get("REMOTE_ADDR") or "")
        if not self._networks or not self._trusted(remote):
            return remote
        hops = [h.strip() for h in str(environ.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
        hops = [h for h in hops if h]
        for hop in reversed(hops):
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else remote

    def client_key(self, bucket: str, environ: dict[str, Any]) -> str:
        """Per token on the authenticated API (only a hash of it reaches the storage), per
        address everywhere else."""
        if bucket == "api":
            auth = str(environ.get("HTTP_AUTHORIZATION", ""))
            if auth[:7].lower() == "bearer " and auth[7:].strip():
                return "token:" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:32]
        return "addr:" + self.client_address(environ)


class RateLimitMiddleware:
    """WSGI layer in front of the fast paths and Flask."""

    def __init__(self, app: Callable[..., Iterable[bytes]], limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not self.limits.enabled:
            return self.app(environ, start_response)
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        bucket = bucket_of(method, path)
        if bucket is None:
            return self.app(environ, start_response)
        refusal = self.limits.check(bucket, self.limits.client_key(bucket, environ))
        if refusal is None:
            return self.app(environ, start_response)
        metrics.record_rate_limited(bucket)
        environ[metrics.ENDPOINT_KEY] = f"<rate-limited:{bucket}>"
        status, headers, body = refusal_response(refusal, environ)
        start_response(status, headers)
        return [body]


def refusal_response(
    refusal: Refusal, environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The refusal in the endpoint's own protocol."""
    retry = str(refusal.retry_after)
    common = [("Retry-After", retry), ("Cache-Control", "no-store")]
    if refusal.bucket == "ocsp":  # OCSP clients read the response status, not HTTP's
        body = ocsp.TRY_LATER.der
        return "200 OK", [("Content-Type", "application/ocsp-response"),
                          ("Content-Length", str(len(body))), *common], body
    if refusal.bucket == "tsa":
        body = TimeStampResponse({"status": {
            "status": "rejection",
            "status_string": [f"Too many requests; retry after {retry} s."],
        }}).dump()
        return "200 OK", [("Content-Type", "application/timestamp-reply"),
                          ("Content-Length", str(len(body))), *common], body
    supplied = str(environ.get("HTTP_X_REQUEST_ID", ""))
    request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
    problem: dict[str, Any] = {
        "type": PROBLEM_TYPE,
        "title": "Too many requests",
        "status": 429,
        "detail": f"rate limit '{refusal.bucket}' exceeded; retry after {retry} s",
        "request_id": request_id,
        "retry_after": refusal.retry_after,
    }
    if str(environ.get("PATH_INFO", "")).startswith("/csc/"):  # CSC clients read these two
        problem["error"] = "rate_limited"
        problem["error_description"] = problem["detail"]
    body = json.dumps(problem).encode()
    return "429 Too Many Requests", [("Content-Type", "application/problem+json"),
                                     ("Content-Length", str(len(body))),
                                     ("X-Request-ID", request_id), *common], body
