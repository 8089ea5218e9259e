"""Revocation and suspension (certificateHold) of certificates, with RFC 5280 reasons.

Who may: the CA operator any certificate; an officer of the board running the organization
(or of the organization itself, for a board's own seal); a school system only its own seal,
and only for keyCompromise (a school that lost its key must be able to act at once).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import audit
from ca.clients import Principal, deny
from ca.errors import Conflict, InvalidRequest, NotFound
from ca.models import Certificate, Organization
from ca.store import Store

# RFC 5280 §5.3.1 reasons that make sense for an end-entity e-seal.
REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
)


def normalize_serial(serial: str) -> str:
    value = serial.strip().lower().removeprefix("0x").lstrip("0")
    if not value or len(value) > 40 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidRequest("serial must be a hexadecimal certificate serial number")
    return value


def find(session: Session, serial: str, *, for_update: bool = False) -> Certificate:
    query = select(Certificate).where(Certificate.serial == normalize_serial(serial),
                                      Certificate.der.is_not(None))
    if for_update:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(f"no certificate with serial {serial}")
    return row


def _may(session: Session, principal: Principal, cert: Certificate, reason: str | None) -> bool:
    if principal.role == "ca-operator":
        return True
    if cert.kind != "eseal" or cert.organization_id is None:
        return False
    org = session.get(Organization, cert.organization_id)
    if org is None:
        return False
    if principal.role == "board-officer":
        return principal.organization_id in (org.id, org.parent_id)
    if principal.role == "school-system":
        return org.id == principal.organization_id and reason == "keyCompromise"
    return False


def revoke(store: Store, principal: Principal, serial: str, reason: str,
           invalidity_date: datetime | None = None, *, request_id: str | None = None,
           now: datetime | None = None) -> Certificate:
    """Revoke (or suspend with certificateHold). A held certificate may be revoked for good."""
    if reason not in REASONS:
        raise InvalidRequest(f"reason must be one of {', '.join(REASONS)}")
    now = now or datetime.now(UTC)
    if invalidity_date is not None:
        if invalidity_date.tzinfo is None:
            raise InvalidRequest("invalidity_date must carry a time zone")
        if invalidity_date > now:
            raise InvalidRequest("invalidity_date cannot be in the future")
    with store.session() as s:
        cert = find(s, serial)
        allowed = _may(s, principal, cert, reason)
        org_id, cert_serial = cert.organization_id, cert.serial
    if not allowed:
        raise deny(store, principal, "certificate.revoke", organization_id=org_id,
                   object_type="certificate", object_id=cert_serial, request_id=request_id,
                   why="you may not revoke this certificate"
                   + (" (a school system may only report keyCompromise of its own seal)"
                      if principal.role == "school-system" else ""))
    with store.session() as s:
        cert = find(s, serial, for_update=True)
        if cert.status == "revoked":
            raise Conflict(f"certificate {cert.serial} is already revoked "
                           f"({cert.revocation_reason})")
        if cert.status == "hold" and reason == "certificateHold":
            raise Conflict(f"certificate {cert.serial} is already suspended")
        if cert.status not in ("issued", "hold"):
            raise Conflict(f"certificate {cert.serial} is {cert.status}")
        if invalidity_date is not None and invalidity_date < cert.not_before:
            raise InvalidRequest("invalidity_date is before the certificate was valid")
        cert.status = "hold" if reason == "certificateHold" else "revoked"
        cert.revocation_reason = reason
        if cert.revoked_at is None or cert.status == "revoked":
            cert.revoked_at = now
        cert.invalidity_date = invalidity_date
        audit.record(s, actor=principal.actor,
                     action="certificate.suspended" if cert.status == "hold"
                     else "certificate.revoked",
                     organization_id=cert.organization_id, object_type="certificate",
                     object_id=f"{cert.issuer_name}/{cert.serial}", request_id=request_id,
                     details={"reason": reason,
                              "invalidity_date": invalidity_date.isoformat()
                              if invalidity_date else None})
    return cert


def unsuspend(store: Store, principal: Principal, serial: str, *,
              request_id: str | None = None) -> Certificate:
    """Lift a certificateHold: the certificate is good again (RFC 5280 removeFromCRL)."""
    with store.session() as s:
        cert = find(s, serial)
        allowed = _may(s, principal, cert, None) and principal.role != "school-system"
        org_id, cert_serial = cert.organization_id, cert.serial
    if not allowed:
        raise deny(store, principal, "certificate.unsuspend", organization_id=org_id,
                   object_type="certificate", object_id=cert_serial, request_id=request_id,
                   why="you may not lift the suspension of this certificate")
    with store.session() as s:
        cert = find(s, serial, for_update=True)
        if cert.status != "hold":
            raise Conflict(f"certificate {cert.serial} is {cert.status}, not suspended")
        cert.status = "issued"
        cert.revocation_reason = None
        cert.revoked_at = None
        cert.invalidity_date = None
        audit.record(s, actor=principal.actor, action="certificate.unsuspended",
                     organization_id=cert.organization_id, object_type="certificate",
                     object_id=f"{cert.issuer_name}/{cert.serial}", request_id=request_id)
    return cert
