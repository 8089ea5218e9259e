"""Flask app factory: services on ``app.extensions``, request ids, problem+json, /healthz."""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ca import api as ca_api
from ca import protocol_api, reconcile
from ca.errors import CAError
from ca.scheduler import ClusterScheduler
from hsm.api import HashAlg, KeyRef, SignScheme
from hsm.errors import HsmError
from kakuin import conformance_api, homedir, jsonbody, logs, metrics, ratelimit, transparency
from kakuin.console import views as console
from kakuin.services import HEALTHCHECK_KEY_LABEL, Services
from kakuin.settings import Settings, load_settings
from signing import api as signing_api
from signing import csc_api, trustlist
from signing.csc import CscService, load_sad_key
from signing.errors import SigningError

log = logging.getLogger("kakuin.http")
PROBLEM_BASE = "urn:kakuin:problem:"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def problem(
    status: int, type_: str, title: str, detail: str | None = None, **extra: Any
) -> tuple[Any, int, dict[str, str]]:
    """An RFC 9457 problem+json response with a stable ``type`` URI."""
    body: dict[str, Any] = {
        "type": type_ if ":" in type_ else PROBLEM_BASE + type_,
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    rid = getattr(g, "request_id", None)
    if rid:
        body["request_id"] = rid
    body.update(extra)
    response = jsonify(body)
    return response, status, {"Content-Type": "application/problem+json"}


def services() -> Services:
    from flask import current_app

    svc: Services = current_app.extensions["kakuin"]
    return svc


def create_app(settings: Settings | None = None, svc: Services | None = None) -> Flask:
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    homedir.secure_home(settings)
    app = Flask("kakuin")
    app.json = jsonbody.StrictJSONProvider(app)  # every request.get_json() is strict
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024
    app.json.ensure_ascii = False
    svc = svc or Services.build(settings)
    reconcile_abandoned(svc)
    app.extensions["kakuin"] = svc
    app.extensions["ca"] = svc.ca
    app.config["KAKUIN_PKI_DIR"] = str(settings.pki_dir)
    app.register_blueprint(ca_api.bp)
    app.register_blueprint(protocol_api.bp)
    app.wsgi_app = protocol_api.OcspFastPath(app.wsgi_app, app.extensions)  # type: ignore[method-assign]
    app.wsgi_app = signing_api.TsaFastPath(app.wsgi_app, app.extensions)  # type: ignore[method-assign]
    # In front of the fast paths: rate limits, then (outermost) request metrics.
    app.wsgi_app = ratelimit.RateLimitMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, ratelimit.RateLimits(settings.limits, namespace=settings.base_url))
    app.wsgi_app = metrics.MetricsMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    metrics.init_app(app, settings.metrics.enabled, settings.metrics.allow_from,
                     settings.metrics.token_env)
    app.extensions["signing"] = svc.signing
    app.register_blueprint(signing_api.bp)
    app.register_blueprint(transparency.bp)  # who sealed this, /transparency/* (issue 15)
    app.register_blueprint(conformance_api.bp)  # vendors' producer check (issue 14)
    csc_api.init_app(app, CscService(svc.store, svc.keys,
                                     load_sad_key(settings.home / "secrets" / "csc-sad.key")))
    console.init_app(app, settings.console, settings.home)  # / and /console (people)
    _register_request_hooks(app)
    _register_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> Any:
        checks = {"database": _check_database(), "hsm": _check_hsm()}
        ok = all(c["ok"] for c in checks.values())
        return jsonify({"status": "ok" if ok else "failing", "checks": checks}), (
            200 if ok else 503
        )

    return app


def _timed(fn: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}"[:300],
            "ms": round((time.perf_counter() - start) * 1000, 2),
        }
    return {"ok": True, "ms": round((time.perf_counter() - start) * 1000, 2)}


def _check_database() -> dict[str, Any]:
    return _timed(services().store.ping)


_health_key: dict[int, KeyRef] = {}


def _check_hsm() -> dict[str, Any]:
    """Sign a fresh random digest with the health-check key and verify it."""

    def check() -> None:
        keys = services().keys
        ref = _health_key.get(id(keys))
        if ref is None:
            ref = keys.find(label=HEALTHCHECK_KEY_LABEL)
            _health_key[id(keys)] = ref
        digest = secrets.token_bytes(32)
        sig = keys.sign_digest(ref, digest, HashAlg.SHA256, SignScheme.ECDSA)
        public = serialization.load_der_public_key(ref.public_key_der)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

        public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))

    return _timed(check)


def _register_request_hooks(app: Flask) -> None:
    @app.before_request
    def start() -> None:
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def finish(response: Any) -> Any:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "ms": round(
                    (time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2
                ),
                "remote": request.remote_addr,
            },
        )
        return response


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(CAError)
    def ca_error(exc: CAError) -> Any:
        return problem(exc.status, exc.type, exc.title, exc.detail, **exc.members())

    @app.errorhandler(SigningError)
    def signing_error(exc: SigningError) -> Any:
        return problem(exc.status, exc.type, exc.title, exc.detail)

    @app.errorhandler(HsmError)
    def hsm_error(exc: HsmError) -> Any:
        log.warning("hsm error", extra={"request_id": g.get("request_id"), "error": str(exc)})
        return problem(exc.status, exc.type, exc.title, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        code = exc.code or 500
        name = (exc.name or "error").lower().replace(" ", "-")
        return problem(code, f"http/{name}", exc.name or "Error", exc.description)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"request_id": g.get("request_id")})
        return problem(
            500,
            "internal-error",
            "Internal server error",
            "an unexpected error occurred; quote the request_id to the operator",
        )


def reconcile_abandoned(svc: Services) -> None:
    """Finish or fail what a dead worker left half-done (``ca.reconcile``); never fatal."""
    try:
        reconcile.reconcile(svc.store, svc.keys, grace=timedelta(
            seconds=svc.settings.status.reconcile_grace_seconds))
    except Exception:
        log.exception("reconcile failed")


def start_maintenance(svc: Services) -> threading.Thread | None:
    """Run the CA's scheduled work in a daemon thread of this (worker) process.

    Every worker of every node has one; the lease (``ca.scheduler``) lets exactly one of them
    run each period for the whole cluster.
    """
    interval = svc.settings.status.maintenance_interval_seconds
    if interval <= 0:
        return None
    stop = threading.Event()
    lease = ClusterScheduler(svc.store, interval)

    def loop() -> None:
        while not stop.is_set():
            try:
                claim = lease.claim()
            except Exception:
                log.exception("maintenance lease unavailable")
                claim = None
            if claim is not None:
                started, ok = time.perf_counter(), False
                done: dict[str, Any] = {}
                try:
                    reconcile_abandoned(svc)
                    done = svc.ca.maintain()
                    done["trust_lists"] = trustlist.refresh_imported(
                        svc.settings.home, fetch=svc.signing.fetch_trust_list)
                    done.update(transparency.scheduled(svc))
                    ok = True
                    if any(done[k] for k in ("crls_published", "ocsp_refreshed",
                                             "responder_renewed")):
                        log.info("maintenance", extra=done)
                except Exception:
                    log.exception("maintenance failed")
                metrics.record_scheduler_run(ok, time.perf_counter() - started)
                try:
                    lease.finish(claim, ok=ok, summary=done)
                except Exception:
                    log.exception("maintenance lease not released")
            # Wake just after the next period starts; jitter spreads the claims a little.
            stop.wait(lease.seconds_until_next_period() + secrets.randbelow(250) / 1000)

    thread = threading.Thread(target=loop, name="kakuin-maintenance", daemon=True)
    thread.start()
    return thread
