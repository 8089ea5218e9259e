"""HTTP face of the CSC API: ``/csc/v2/...`` and ``/csc/v1/...`` (pyHanko's ``CSCSigner``
speaks v1).

Both versions accept both spellings of a field (``hashes``/``hash``,
``hashAlgorithmOID``/``hashAlgo``) because clients mix them. Errors are CSC JSON
(``{"error", "error_description"}``), not problem+json: CSC clients parse only that.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ca import status
from hsm.errors import HsmError
from signing.csc import METHODS, CscError, CscService
from signing.errors import SigningError

log = logging.getLogger("kakuin.csc")
bp = Blueprint("csc", __name__)
_VERSION = "/csc/<any(v1, v2):version>"
_ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def init_app(app: Flask, service: CscService) -> None:
    """Register the blueprint (once) and the service it uses (replaceable, e.g. in tests)."""
    app.extensions["csc"] = service
    if "csc" not in app.blueprints:
        app.register_blueprint(bp)


def _service() -> CscService:
    svc: CscService = current_app.extensions["csc"]
    return svc


def _principal() -> status.Principal:
    return status.authenticate_header(_service().store, request.headers.get("Authorization"))


def _body(optional: bool = False) -> dict[str, Any]:
    if optional and not request.get_data(cache=True):
        return {}
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        raise CscError("The request body must be a JSON object")
    return body


def _field(body: dict[str, Any], *names: str) -> Any:
    """The value under the first of ``names`` present; two different values is an error."""
    present = [n for n in names if body.get(n) is not None]
    if len(present) > 1 and len({repr(body[n]) for n in present}) > 1:
        raise CscError(f"Conflicting parameters {' and '.join(present)}")
    return body[present[0]] if present else None


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise CscError(f"Missing (or invalid type) string parameter {name}")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise CscError(f"Invalid parameter {name}")
    return value


def _certificates(body: dict[str, Any]) -> str:
    value = body.get("certificates", "single")
    if not isinstance(value, str):
        raise CscError("Invalid parameter certificates")
    return value


def _hash_names(version: str) -> tuple[str, str]:
    return ("hashes", "hash") if version == "v2" else ("hash", "hashes")


def _hash_algo_names(version: str) -> tuple[str, str]:
    return ("hashAlgorithmOID", "hashAlgo") if version == "v2" else ("hashAlgo", "hashAlgorithmOID")


@bp.route(f"{_VERSION}/info", methods=["GET", "POST"])
def info(version: str) -> Any:
    if request.method == "POST":
        _body(optional=True)
    return jsonify(_service().info(version))


@bp.post(f"{_VERSION}/credentials/list")
def credentials_list(version: str) -> Any:
    principal = _principal()
    body = _body(optional=True)
    svc = _service()
    ids = svc.credentials_list(principal)
    out: dict[str, Any] = {"credentialIDs": ids}
    if _flag(body, "credentialInfo"):
        out["credentialInfos"] = [
            {
                "credentialID": cid,
                **svc.credentials_info(
                    principal,
                    cid,
                    version=version,
                    certificates=_certificates(body),
                    cert_info=_flag(body, "certInfo"),
                    request_id=g.get("request_id"),
                ),
            }
            for cid in ids
        ]
    if version == "v2":
        out["onlyValid"] = True
    return jsonify(out)


@bp.post(f"{_VERSION}/credentials/info")
def credentials_info(version: str) -> Any:
    principal = _principal()
    body = _body()
    return jsonify(
        _service().credentials_info(
            principal,
            _string(body, "credentialID"),
            version=version,
            certificates=_certificates(body),
            cert_info=_flag(body, "certInfo"),
            request_id=g.get("request_id"),
        )
    )


@bp.post(f"{_VERSION}/credentials/authorize")
def credentials_authorize(version: str) -> Any:
    principal = _principal()
    body = _body()
    hash_algo = _field(body, *_hash_algo_names(version))
    auth = _service().authorize(
        principal,
        _string(body, "credentialID"),
        num_signatures=body.get("numSignatures"),
        hashes_b64=_field(body, *_hash_names(version)),
        hash_algo=hash_algo,
        request_id=g.get("request_id"),
    )
    return jsonify({"SAD": auth.sad, "expiresIn": auth.expires_in})


@bp.post(f"{_VERSION}/signatures/signHash")
def sign_hash(version: str) -> Any:
    principal = _principal()
    body = _body()
    if body.get("operationMode", "S") != "S":
        raise CscError("Invalid parameter operationMode: only synchronous (S) is supported")
    receipts: list[dict[str, str]] = []
    signatures = _service().sign_hash(
        principal,
        _string(body, "credentialID"),
        sad=_string(body, "SAD"),
        hashes_b64=_field(body, *_hash_names(version)),
        sign_algo=_string(body, "signAlgo"),
        hash_algo=_field(body, *_hash_algo_names(version)),
        sign_algo_params=body.get("signAlgoParams"),
        request_id=g.get("request_id"),
        actor=body.get("actor"),
        receipts=receipts,
    )
    # kakuin extension: transparency receipts (salt, commitment), one per hash.
    return jsonify({"signatures": signatures, "receipts": receipts})


@bp.route("/csc/<path:rest>", methods=_ALL_METHODS)
def unknown(rest: str) -> Any:
    """Unknown CSC paths and wrong methods answer in CSC terms too."""
    version, _, method = rest.partition("/")
    if version in ("v1", "v2") and (method in METHODS or method == "info"):
        raise CscError(f"{request.method} is not allowed here", status=405)
    raise CscError(f"unknown CSC endpoint /csc/{rest}", status=404)


def _error(status_code: int, error: str, description: str) -> Any:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status_code
    if status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


@bp.errorhandler(CscError)
def csc_error(exc: CscError) -> Any:
    return _error(exc.status, exc.error, exc.detail)


@bp.errorhandler(status.CAError)
def ca_error(exc: status.CAError) -> Any:
    if exc.status == 401:
        return _error(401, "invalid_token", exc.detail)
    if exc.status == 403:
        return _error(403, "access_denied", exc.detail)
    if exc.status >= 500:
        return _error(exc.status, "server_error", exc.detail)
    return _error(400, "invalid_request", exc.detail)


@bp.errorhandler(SigningError)
def signing_error(exc: SigningError) -> Any:
    code = exc.status
    return _error(code, "server_error" if code >= 500 else "invalid_request", exc.detail)


@bp.errorhandler(HsmError)
def hsm_error(exc: HsmError) -> Any:
    log.warning("hsm error", extra={"request_id": g.get("request_id"), "error": str(exc)})
    return _error(503, "server_error", "the signing device is unavailable; try again later")


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:
    code = exc.code or 500
    return _error(code, "server_error" if code >= 500 else "invalid_request", exc.name)


@bp.errorhandler(Exception)
def unexpected(exc: Exception) -> Any:
    log.exception("unhandled error", extra={"request_id": g.get("request_id")})
    return _error(500, "server_error", "an unexpected error occurred; quote the X-Request-ID")
