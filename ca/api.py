"""REST API of the CA under /api/v1: parse, authorise, call a plain function, render."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select

from ca import enrollment, names, registry, revocation
from ca.clients import Principal, authenticate, deny, may_read
from ca.errors import Forbidden, InvalidRequest, NotFound
from ca.models import Certificate, Organization, SealRequest
from ca.openapi import OPENAPI
from ca.service import CAService
from ca.strictjson import BadJSON

bp = Blueprint("ca_api", __name__, url_prefix="/api/v1")
# Row ids are 32-bit INTEGER columns on PostgreSQL: larger ids in a path are simply not found
# (never a database overflow error); in a body they are refused.
MAX_ID = 2**31 - 1
_ID = f"int(max={MAX_ID})"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _svc() -> CAService:
    svc: CAService = current_app.extensions["ca"]
    return svc


def _rid() -> str | None:
    return g.get("request_id")


def _principal() -> Principal:
    with _svc().store.session() as s:
        return authenticate(s, request.headers.get("Authorization"))


def _json() -> dict[str, Any]:
    if not request.is_json:
        raise BadJSON("send Content-Type: application/json")
    body = request.get_json()  # strict: the app's JSON provider is ca.strictjson
    if not isinstance(body, dict):
        raise BadJSON("the body must be a JSON object")
    return body


def _str(body: dict[str, Any], key: str, *, required: bool = True, max_len: int = 256) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"'{key}' is required")
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidRequest(f"'{key}' must be a non-empty string of at most {max_len} characters")
    if "\x00" in value:  # no column takes NUL (PostgreSQL refuses it outright)
        if key in names.NAME_FIELDS:  # a name's refusal names its field and rule
            raise names.NameRejected(key, "control", f"'{key}' contains U+0000 (NUL)")
        raise InvalidRequest(f"'{key}' must not contain NUL characters")
    return value


def _int(body: dict[str, Any], key: str, *, required: bool = True) -> Any:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
        raise InvalidRequest(f"'{key}' must be an integer id from 1 to {MAX_ID}")
    return value


def _request_uuid(value: str) -> str:
    """Seal request ids are UUIDs; anything else cannot exist (no database lookup)."""
    if not _UUID.match(value):
        raise NotFound(f"seal request {value[:64]!r} not found")
    return value


# -- organizations --------------------------------------------------------------------------


def _org_json(org: Organization) -> dict[str, Any]:
    return {
        "id": org.id,
        "kind": org.kind,
        "name_ja": org.name_ja,
        "name_en": org.name_en,
        "school_code": org.school_code,
        "local_gov_code": org.local_gov_code,
        "corporate_number": org.corporate_number,
        "prefecture": org.prefecture,
        "parent_id": org.parent_id,
        "status": org.status,
        "organization_identifier": registry.organization_identifier(org),
    }


@bp.post("/organizations")
def create_organization() -> Any:
    principal = _principal()
    body = _json()
    kind = _str(body, "kind", max_len=32)
    store = _svc().store
    with store.session() as s:
        if kind == "school":
            board_id = _int(body, "board_id", required=False) or principal.organization_id
            if board_id is None:
                raise InvalidRequest("'board_id' is required")
            if principal.role not in ("board-officer", "ca-operator") or (
                principal.role == "board-officer" and board_id != principal.organization_id
            ):
                raise _deny(
                    principal,
                    "organization.create",
                    board_id,
                    "only an officer of the school's board (or the operator) may register a school",
                )
            org = registry.add_school(
                s,
                name_ja=_str(body, "name_ja"),
                school_code=_str(body, "school_code", max_len=13),
                board_id=board_id,
                name_en=_str(body, "name_en", required=False),
                actor=principal.actor,
                request_id=_rid(),
                # A board's registration waits for the operator (or the imported list).
                confirmed=principal.role == "ca-operator",
            )
        elif kind in ("board", "school_corporation"):
            if principal.role != "ca-operator":
                raise _deny(
                    principal,
                    "organization.create",
                    None,
                    f"only the CA operator registers a {kind}",
                )
            if kind == "board":
                org = registry.add_board(
                    s,
                    name_ja=_str(body, "name_ja"),
                    local_gov_code=_str(body, "local_gov_code", max_len=6),
                    corporate_number=_str(body, "corporate_number", required=False, max_len=13),
                    name_en=_str(body, "name_en", required=False),
                    actor=principal.actor,
                    request_id=_rid(),
                )
            else:
                org = registry.add_school_corporation(
                    s,
                    name_ja=_str(body, "name_ja"),
                    corporate_number=_str(body, "corporate_number", max_len=13),
                    prefecture=_str(body, "prefecture", max_len=2),
                    name_en=_str(body, "name_en", required=False),
                    actor=principal.actor,
                    request_id=_rid(),
                )
        else:
            raise InvalidRequest("'kind' must be school, board or school_corporation")
        data = _org_json(org)
    return jsonify(data), 201, {"Location": f"/api/v1/organizations/{data['id']}"}


@bp.get(f"/organizations/<{_ID}:org_id>")
def get_organization(org_id: int) -> Any:
    principal = _principal()
    with _svc().store.session() as s:
        org = registry.get(s, org_id)
        if not may_read(s, principal, org):
            raise _deny(principal, "organization.read", org_id, "not your organization")
        return jsonify(_org_json(org))


@bp.post(f"/organizations/<{_ID}:org_id>/confirm")
def confirm_organization(org_id: int) -> Any:
    """The operator confirms a school a board registered (``pending`` -> ``active``)."""
    principal = _principal()
    if principal.role != "ca-operator":
        raise _deny(principal, "organization.confirm", org_id,
                    "only the CA operator confirms a school's registration")
    with _svc().store.session() as s:
        org = registry.confirm_school(s, org_id, actor=principal.actor, request_id=_rid())
        return jsonify(_org_json(org))


@bp.get(f"/organizations/<{_ID}:org_id>/certificates")
def organization_certificates(org_id: int) -> Any:
    principal = _principal()
    with _svc().store.session() as s:
        org = registry.get(s, org_id)
        if not may_read(s, principal, org):
            raise _deny(principal, "organization.certificates", org_id, "not your organization")
        rows = s.scalars(
            select(Certificate)
            .where(Certificate.organization_id == org_id, Certificate.der.is_not(None))
            .order_by(Certificate.not_before.desc())
        ).all()
        return jsonify(
            {
                "organization_id": org_id,
                "certificates": [_cert_json(r, with_pem=False) for r in rows],
            }
        )


# -- seal requests --------------------------------------------------------------------------


def _request_json(row: SealRequest) -> dict[str, Any]:
    cert = enrollment.certificate_for_request(_svc().store, row.id)
    approvals = [{"client_id": a.client_id, "subject": a.subject, "at": a.at.isoformat()}
                 for a in enrollment.approvals_of(_svc().store, row.id)]
    return {
        "id": row.id,
        "organization_id": row.organization_id,
        "status": row.status,
        "profile": row.profile,
        "key": {
            "hosted": row.hosted_key_id is not None,
            "algorithm": row.key_algorithm,
            "public_key_sha256": row.public_key_sha256,
        },
        "replaces_serial": row.replaces_serial,
        "requested_by": {"client_id": row.requested_by, "subject": row.requested_by_subject},
        "approvals_required": row.approvals_required,
        "approvals": approvals,
        "approved_by": [a["client_id"] for a in approvals],
        "decided_by": row.decided_by,
        "created_at": row.created_at.isoformat(),
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "reason": row.reason if row.status in ("rejected", "failed") else None,
        "certificate": _cert_json(cert, with_pem=True) if cert else None,
    }


def _csr_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'csr' must be a PEM string or base64 DER")
    if len(value) > 64 * 1024:
        raise InvalidRequest("'csr' is too large")
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("'csr' is neither PEM nor base64 DER") from exc


@bp.post("/seal-requests")
def create_seal_request() -> Any:
    principal = _principal()
    body = _json()
    org_id = _int(body, "organization_id", required=False) or principal.organization_id
    if org_id is None:
        raise InvalidRequest("'organization_id' is required")
    csr = body.get("csr")
    key = body.get("key")
    if csr is not None and key is not None:
        raise InvalidRequest("give either 'csr' or 'key', not both")
    hosted_algorithm = None
    if key is not None:
        if not isinstance(key, dict) or key.get("hosted") is not True:
            raise InvalidRequest('\'key\' must be {"hosted": true, "algorithm": ...}')
        hosted_algorithm = key.get("algorithm", "ECDSA-P256")
        if not isinstance(hosted_algorithm, str):
            raise InvalidRequest("'key.algorithm' must be a string")
    elif csr is None:
        raise InvalidRequest("give 'csr' (PKCS#10) or 'key': {\"hosted\": true}")
    svc = _svc()
    row = enrollment.submit(
        svc.store,
        svc.keys,
        svc.profiles,
        principal,
        enrollment.NewRequest(
            organization_id=org_id,
            profile=_str(body, "profile", required=False, max_len=64) or "eseal",
            csr=_csr_bytes(csr) if csr is not None else None,
            hosted_algorithm=hosted_algorithm,
            replaces_serial=_str(body, "replaces_serial", required=False, max_len=40),
        ),
        request_id=_rid(),
    )
    return jsonify(_request_json(row)), 201, {"Location": f"/api/v1/seal-requests/{row.id}"}


@bp.get("/seal-requests/<request_uuid>")
def get_seal_request(request_uuid: str) -> Any:
    principal = _principal()
    request_uuid = _request_uuid(request_uuid)
    return jsonify(
        _request_json(enrollment.get(_svc().store, principal, request_uuid, request_id=_rid()))
    )


@bp.post("/seal-requests/<request_uuid>/approve")
def approve_seal_request(request_uuid: str) -> Any:
    principal = _principal()
    request_uuid = _request_uuid(request_uuid)
    svc = _svc()
    row, _cert = enrollment.approve(
        svc.store,
        svc.keys,
        svc.authority(),
        svc.profiles,
        principal,
        request_uuid,
        request_id=_rid(),
        lint_before_signing=svc.lint_before_signing,
    )
    # 202: the approval is recorded, more distinct approvers are needed before issuance.
    return jsonify(_request_json(row)), 200 if _cert is not None else 202


@bp.post("/seal-requests/<request_uuid>/reject")
def reject_seal_request(request_uuid: str) -> Any:
    principal = _principal()
    request_uuid = _request_uuid(request_uuid)
    body = _json() if request.data else {}
    svc = _svc()
    row = enrollment.reject(
        svc.store,
        svc.keys,
        principal,
        request_uuid,
        _str(body, "reason", required=False, max_len=1000),
        request_id=_rid(),
    )
    return jsonify(_request_json(row))


# -- certificates ---------------------------------------------------------------------------


def _cert_json(row: Certificate, *, with_pem: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "serial": row.serial,
        "issuer_name": row.issuer_name,
        "kind": row.kind,
        "subject": row.subject,
        "organization_id": row.organization_id,
        "not_before": row.not_before.isoformat(),
        "not_after": row.not_after.isoformat(),
        "status": row.status,
        "revocation_reason": row.revocation_reason,
        "url": f"/api/v1/certificates/{row.serial}",
    }
    if with_pem and row.der:
        data["pem"] = (
            x509.load_der_x509_certificate(row.der)
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
    return data


@bp.get("/certificates/<serial>")
def get_certificate(serial: str) -> Any:
    """Certificates are public artefacts: verifiers anywhere may fetch them."""
    normalized = serial.lower().lstrip("0")
    if (
        not normalized
        or len(normalized) > 40
        or any(c not in "0123456789abcdef" for c in normalized)
    ):
        raise InvalidRequest("serial must be hexadecimal")
    with _svc().store.session() as s:
        row = s.scalars(
            select(Certificate).where(
                Certificate.serial == normalized, Certificate.der.is_not(None)
            )
        ).first()
    if row is None or row.der is None:
        raise NotFound(f"no certificate with serial {serial}")
    best = request.accept_mimetypes.best_match(
        [
            "application/json",
            "application/pkix-cert",
            "application/x-pem-file",
            "application/pem-certificate-chain",
        ],
        default="application/json",
    )
    if best == "application/pkix-cert":
        return Response(row.der, mimetype="application/pkix-cert")
    if best in ("application/x-pem-file", "application/pem-certificate-chain"):
        pem = x509.load_der_x509_certificate(row.der).public_bytes(serialization.Encoding.PEM)
        return Response(pem, mimetype=best)
    return jsonify(_cert_json(row, with_pem=True))


def _datetime(body: dict[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{key}' must be an RFC 3339 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"'{key}' is not an RFC 3339 date-time: {exc}") from exc
    if parsed.tzinfo is None:
        raise InvalidRequest(f"'{key}' must carry a time zone offset")
    return parsed


@bp.post("/certificates/<serial>/revoke")
def revoke_certificate(serial: str) -> Any:
    principal = _principal()
    body = _json()
    svc = _svc()
    row = revocation.revoke(svc.store, principal, serial, _str(body, "reason", max_len=32),
                            _datetime(body, "invalidity_date"), request_id=_rid())
    svc.status_changed(row)
    return jsonify(_cert_json(row, with_pem=False))


@bp.post("/certificates/<serial>/unsuspend")
def unsuspend_certificate(serial: str) -> Any:
    principal = _principal()
    svc = _svc()
    row = revocation.unsuspend(svc.store, principal, serial, request_id=_rid())
    svc.status_changed(row)
    return jsonify(_cert_json(row, with_pem=False))


@bp.get("/openapi.json")
def openapi() -> Any:
    return jsonify(OPENAPI)


def _deny(principal: Principal, action: str, org_id: int | None, why: str) -> Forbidden:
    return deny(_svc().store, principal, action, organization_id=org_id, why=why, request_id=_rid())
