"""Public protocol endpoints, whose URLs are written into certificates (AIA, CDP) and so must
never move: OCSP (RFC 6960, RFC 5019/9919 over HTTP) and the published CA certificates and
CRLs under /pki.

OCSP answers are always HTTP 200 with an OCSPResponse, errors included (malformedRequest,
tryLater, ...): OCSP clients read the response status, not the HTTP one.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request, send_file
from werkzeug.http import http_date

from ca import crl, ocsp
from ca.errors import NotFound
from ca.service import CAService

bp = Blueprint("ca_protocol", __name__)

OCSP_RESPONSE = "application/ocsp-response"
PKI_DIR_CONFIG = "KAKUIN_PKI_DIR"
# CA names are at most 64 characters (the issuer_name column): longer is never a file here.
_NAME = re.compile(r"^(?=.{1,64}$)[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
"""Published file names: no path separators, no leading dot, no '..'."""


def _svc() -> CAService:
    svc: CAService = current_app.extensions["ca"]
    return svc


def _responder_from(extensions: dict[str, Any]) -> ocsp.ResponderCache:
    """One responder per app, built on first use (the HSM may be down when the app starts)."""
    cache: ocsp.ResponderCache | None = extensions.get("ocsp_responder")
    if cache is None:
        svc: CAService = extensions["ca"]
        cache = extensions.setdefault(
            "ocsp_responder", ocsp.ResponderCache(svc.store, svc.keys, svc.issuing_name)
        )
    return cache


def _responder() -> ocsp.ResponderCache:
    return _responder_from(current_app.extensions)


def _cache_headers(result: ocsp.OcspResult) -> dict[str, str]:
    """RFC 5019 §5 headers on cacheable responses; ``no-store`` on the rest (nonces, errors)."""
    etag = result.etag
    if etag is None or result.next_update is None or result.produced_at is None:
        return {"Cache-Control": "no-store"}
    max_age = max(0, int((result.next_update - datetime.now(UTC)).total_seconds()))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": http_date(result.produced_at),
        "Expires": http_date(result.next_update),
        "ETag": f'"{etag}"',
    }


class OcspFastPath:
    """WSGI middleware answering ``POST /ocsp`` below Flask.

    Measured (bench/ocsp.py): of ~780 µs per OCSP response, ~500 µs were Flask/Werkzeug and
    the app's request-id and JSON log hooks, ~110 µs the OCSP work. OCSP is the hottest public
    endpoint, so its POST skips them (no per-request log line); everything else, GET included,
    goes through the app unchanged.
    """

    def __init__(self, app: Any, extensions: dict[str, Any]) -> None:
        self.app = app
        self.extensions = extensions

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") not in (
            "/ocsp", "/ocsp/"):
            return self.app(environ, start_response)
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length > ocsp.MAX_REQUEST_BYTES:
            result = ocsp.MALFORMED
        else:
            stream = environ["wsgi.input"]
            if length >= 0:
                body = stream.read(length)
            elif environ.get("wsgi.input_terminated"):  # chunked, delimited by the server
                body = stream.read(ocsp.MAX_REQUEST_BYTES + 1)
            else:  # no length and a raw stream: reading would block on the socket
                body = b""
            result = _responder_from(self.extensions).respond(body)
        headers = [("Content-Type", OCSP_RESPONSE), ("Content-Length", str(len(result.der))),
                   *_cache_headers(result).items()]
        start_response("200 OK", headers)
        return [result.der]


def _ocsp_http(result: ocsp.OcspResult, *, conditional: bool = False) -> Response:
    headers = _cache_headers(result)
    etag = result.etag
    if etag is None or "ETag" not in headers:
        return Response(result.der, 200, headers, mimetype=OCSP_RESPONSE)
    if conditional and request.if_none_match.contains(etag):
        return Response(status=304, headers=headers)
    return Response(result.der, 200, headers, mimetype=OCSP_RESPONSE)


@bp.post("/ocsp")
@bp.post("/ocsp/")
def ocsp_post() -> Response:
    """RFC 6960 A.1 POST. The content type isn't checked: a wrong one doesn't change what the
    body is, and refusing it would only break lax clients."""
    length = request.content_length
    if length is not None and length > ocsp.MAX_REQUEST_BYTES:
        return _ocsp_http(ocsp.MALFORMED)
    body = request.stream.read(ocsp.MAX_REQUEST_BYTES + 1)
    return _ocsp_http(_responder().respond(body))


@bp.get("/ocsp")
@bp.get("/ocsp/")
def ocsp_get_empty() -> Response:
    return _ocsp_http(ocsp.MALFORMED)


# merge_slashes=False: base64 may contain "//", which Werkzeug would otherwise redirect away.
@bp.get("/ocsp/<path:encoded>", merge_slashes=False)
def ocsp_get(encoded: str) -> Response:
    """RFC 6960 A.1 GET: the base64 request, URL-encoded, as the last path segment(s)."""
    der = ocsp.decode_get(encoded)
    result = ocsp.MALFORMED if der is None else _responder().respond(der)
    return _ocsp_http(result, conditional=True)


@bp.get("/pki/<name>.crt")
def ca_certificate(name: str) -> Response:
    """A DER CA certificate from the published PKI directory (the AIA caIssuers URL)."""
    directory = current_app.config.get(PKI_DIR_CONFIG)
    if not _NAME.match(name) or not directory:
        raise NotFound(f"no published certificate {name!r}")
    path = Path(directory) / f"{name}.crt"
    if not path.is_file():
        raise NotFound(f"no published certificate {name!r}")
    return send_file(path, mimetype="application/pkix-cert", max_age=3600)


@bp.get("/pki/<name>.crl")
def ca_crl(name: str) -> Response:
    """The newest CRL of CA ``name`` (the CDP URL), from the database, not the file copy."""
    row = crl.latest(_svc().store, name) if _NAME.match(name) else None
    if row is None:
        raise NotFound(f"no CRL published for {name!r}")
    etag = hashlib.sha256(row.der).hexdigest()
    max_age = max(0, int((row.next_update - datetime.now(UTC)).total_seconds()))
    headers = {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": http_date(row.this_update),
        "Expires": http_date(row.next_update),
        "ETag": f'"{etag}"',
    }
    if request.if_none_match.contains(etag):
        return Response(status=304, headers=headers)
    return Response(row.der, 200, headers, mimetype="application/pkix-crl")
