"""Seal requests: submitted by a school system, decided by its board, issued by the CA.

The RA composes the subject from the registry (never from the CSR), checks the key, and only
an approval by an officer of the board that runs the school (or the CA operator) reaches the
issuer. Every step is audited with the acting client.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import audit, eseal, policy, registry
from ca.clients import Principal, deny, governs
from ca.errors import Conflict, InvalidRequest, NotFound
from ca.issuer import CertificateOrder, IssuingAuthority, issue
from ca.models import Certificate, Organization, SealRequest, serial_hex
from ca.profiles import Profile
from ca.store import Store
from hsm.api import KeyAlgorithm, KeyManager, KeyRef
from hsm.errors import HsmKeyNotFound

SEALABLE_KINDS = ("school", "board", "school_corporation")
HOSTED_ALGORITHMS = ("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072")


@dataclass(frozen=True)
class NewRequest:
    """What a client asked for, already parsed by the web layer (or the CLI)."""

    organization_id: int
    profile: str = "eseal"
    csr: bytes | None = None
    hosted_algorithm: str | None = None
    replaces_serial: str | None = None


def _sealable(session: Session, org_id: int) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"organization {org_id} not found")
    if org.kind not in SEALABLE_KINDS:
        raise InvalidRequest(f"a {org.kind} cannot hold an e-seal")
    if org.status != "active":
        raise InvalidRequest(f"organization {org_id} is {org.status}")
    return org


def _profile(profiles: dict[str, Profile], name: str) -> Profile:
    profile = profiles.get(name)
    if profile is None or profile.kind != "eseal":
        names = sorted(p.name for p in profiles.values() if p.kind == "eseal")
        raise InvalidRequest(f"unknown e-seal profile {name!r}; configured: {', '.join(names)}")
    return profile


def submit(
    store: Store,
    keys: KeyManager,
    profiles: dict[str, Profile],
    principal: Principal,
    new: NewRequest,
    *,
    request_id: str | None = None,
) -> SealRequest:
    """Validate and queue a request; a hosted key is generated in the HSM now."""
    def refuse(why: str) -> Exception:
        return deny(store, principal, "seal-request.submit", organization_id=new.organization_id,
                    object_type="seal-request", request_id=request_id, why=why)

    if principal.role not in ("school-system", "board-officer", "ca-operator"):
        raise refuse(f"role {principal.role} cannot request seals")
    _profile(profiles, new.profile)
    if (new.csr is None) == (new.hosted_algorithm is None):
        raise InvalidRequest("give exactly one of 'csr' or 'key': {'hosted': true, ...}")
    with store.session() as s:
        org = _sealable(s, new.organization_id)
        if not governs(s, principal, org):
            allowed = False
        else:
            allowed = principal.role != "school-system" or org.id == principal.organization_id
    if not allowed:
        raise refuse("you may request seals only for your own organization")

    request_uuid = str(uuid.uuid4())
    hosted: KeyRef | None = None
    if new.csr is not None:
        key = policy.csr_key(new.csr)
        algorithm, spki_sha256 = key.algorithm, key.spki_sha256
    else:
        if new.hosted_algorithm not in HOSTED_ALGORITHMS:
            raise InvalidRequest(
                f"hosted key algorithm must be one of {', '.join(HOSTED_ALGORITHMS)}"
            )
        algorithm = new.hosted_algorithm
        spki_sha256 = ""
    try:
        with store.session() as s:
            org = _sealable(s, new.organization_id)
            if new.replaces_serial is not None:
                _check_replaces(s, org, new.replaces_serial)
            if new.csr is not None:
                policy.check_key_unused(s, spki_sha256, org.id)
            else:
                hosted = keys.generate(KeyAlgorithm(algorithm), f"eseal-{org.id}-{request_uuid}")
                spki_sha256 = hosted.public_key_sha256
            row = SealRequest(
                id=request_uuid,
                organization_id=org.id,
                requested_by=principal.client_id,
                status="pending",
                profile=new.profile,
                csr_der=_csr_der(new.csr),
                hosted_key_id=hosted.key_id_hex if hosted else None,
                key_algorithm=algorithm,
                public_key_sha256=spki_sha256,
                replaces_serial=new.replaces_serial,
            )
            s.add(row)
            audit.record(
                s,
                actor=principal.actor,
                action="seal-request.submitted",
                organization_id=org.id,
                object_type="seal-request",
                object_id=request_uuid,
                digest=spki_sha256,
                request_id=request_id,
                details={
                    "profile": new.profile,
                    "algorithm": algorithm,
                    "hosted": hosted is not None,
                    "replaces": new.replaces_serial,
                },
            )
    except BaseException:
        if hosted is not None:
            keys.destroy(hosted)  # nothing half-made stays behind
        raise
    return row


def _csr_der(csr: bytes | None) -> bytes | None:
    if csr is None:
        return None
    return policy.parse_csr(csr).public_bytes(serialization.Encoding.DER)


def _check_replaces(session: Session, org: Organization, serial: str) -> None:
    cert = session.scalars(
        select(Certificate).where(
            Certificate.serial == serial.lower().lstrip("0"), Certificate.kind == "eseal"
        )
    ).first()
    if cert is None or cert.organization_id != org.id:
        raise InvalidRequest(f"certificate {serial} is not an e-seal of this organization")
    if cert.status != "issued":
        raise InvalidRequest(f"certificate {serial} is {cert.status}; only a valid one is renewed")


def get(
    store: Store, principal: Principal, request_uuid: str, *, request_id: str | None = None
) -> SealRequest:
    with store.session() as s:
        row = s.get(SealRequest, request_uuid)
        if row is None:
            raise NotFound(f"seal request {request_uuid} not found")
        org = s.get(Organization, row.organization_id)
        assert org is not None
        visible = governs(s, principal, org) or principal.role == "auditor"
    if not visible:
        raise deny(
            store,
            principal,
            "seal-request.read",
            organization_id=row.organization_id,
            object_type="seal-request",
            object_id=request_uuid,
            request_id=request_id,
            why="this seal request belongs to another organization",
        )
    return row


def _require_decider(store: Store, principal: Principal, request_uuid: str, action: str,
                     request_id: str | None) -> None:
    """404 for an unknown request; an audited 403 unless ``principal`` may decide it."""
    with store.session() as s:
        row = s.get(SealRequest, request_uuid)
        if row is None:
            raise NotFound(f"seal request {request_uuid} not found")
        org = s.get(Organization, row.organization_id)
        assert org is not None
        allowed = _decider_may(s, principal, org)
        org_id = row.organization_id
    if not allowed:
        raise deny(store, principal, action, organization_id=org_id, object_type="seal-request",
                   object_id=request_uuid, request_id=request_id,
                   why="only an officer of the board running this organization may decide")


def _decider_may(session: Session, principal: Principal, org: Organization) -> bool:
    """Only the board running the school (or the operator) decides; never the requester."""
    if principal.role == "ca-operator":
        return True
    return principal.role == "board-officer" and org.parent_id == principal.organization_id


def reject(
    store: Store,
    keys: KeyManager,
    principal: Principal,
    request_uuid: str,
    reason: str | None,
    *,
    request_id: str | None = None,
) -> SealRequest:
    _require_decider(store, principal, request_uuid, "seal-request.reject", request_id)
    with store.session() as s:
        row = s.get(SealRequest, request_uuid, with_for_update=True)
        assert row is not None
        if row.status != "pending":
            raise Conflict(f"seal request is already {row.status}")
        row.status = "rejected"
        row.decided_by = principal.client_id
        row.decided_at = datetime.now(UTC)
        row.reason = (reason or "")[:1000] or None
        audit.record(
            s,
            actor=principal.actor,
            action="seal-request.rejected",
            organization_id=row.organization_id,
            object_type="seal-request",
            object_id=request_uuid,
            request_id=request_id,
            details={"reason": row.reason},
        )
    if row.hosted_key_id:
        try:
            keys.destroy(keys.find(key_id=bytes.fromhex(row.hosted_key_id)))
        except HsmKeyNotFound:
            pass  # already gone: the rejection stands either way
    return row


def approve(
    store: Store,
    keys: KeyManager,
    authority: IssuingAuthority,
    profiles: dict[str, Profile],
    principal: Principal,
    request_uuid: str,
    *,
    request_id: str | None = None,
    lint_before_signing: bool = True,
) -> tuple[SealRequest, x509.Certificate]:
    """Approve and issue. The request moves pending -> approved -> issued (or failed)."""
    _require_decider(store, principal, request_uuid, "seal-request.approve", request_id)

    with store.session() as s:
        row = s.get(SealRequest, request_uuid, with_for_update=True)
        assert row is not None
        if row.status != "pending":
            raise Conflict(f"seal request is already {row.status}")
        org = _sealable(s, row.organization_id)
        policy.check_key_unused(s, row.public_key_sha256, org.id, exclude_request=row.id)
        row.status = "approved"
        row.decided_by = principal.client_id
        row.decided_at = datetime.now(UTC)
        audit.record(
            s,
            actor=principal.actor,
            action="seal-request.approved",
            organization_id=org.id,
            object_type="seal-request",
            object_id=row.id,
            request_id=request_id,
        )
        order = _order(s, row, org, keys, profiles)

    try:
        cert = issue(store, authority, order, actor=principal.actor, request_id=request_id,
                     lint_before_signing=lint_before_signing)
    except BaseException as exc:
        with store.session() as s:
            failed = s.get(SealRequest, request_uuid)
            assert failed is not None
            failed.status = "failed"
            failed.reason = f"{type(exc).__name__}: {exc}"[:1000]
            audit.record(
                s,
                actor=principal.actor,
                action="seal-request.failed",
                organization_id=failed.organization_id,
                object_type="seal-request",
                object_id=failed.id,
                request_id=request_id,
                details={"error": type(exc).__name__},
            )
        raise
    with store.session() as s:
        done = s.get(SealRequest, request_uuid)
        assert done is not None
        done.status = "issued"
        audit.record(
            s,
            actor=principal.actor,
            action="seal-request.issued",
            organization_id=done.organization_id,
            object_type="seal-request",
            object_id=done.id,
            request_id=request_id,
            details={"serial": serial_hex(cert.serial_number)},
        )
    return done, cert


def _order(
    session: Session,
    row: SealRequest,
    org: Organization,
    keys: KeyManager,
    profiles: dict[str, Profile],
) -> CertificateOrder:
    profile = _profile(profiles, row.profile)
    if row.csr_der is not None:
        public_key = policy.csr_key(row.csr_der).public_key
    else:
        assert row.hosted_key_id is not None
        ref = keys.find(key_id=bytes.fromhex(row.hosted_key_id))
        public_key = policy.accept_key(
            serialization.load_der_public_key(ref.public_key_der)
        ).public_key
    identifier = registry.organization_identifier(org)
    subject = eseal.eseal_subject(
        name_ja=org.name_ja, organization_identifier=identifier, name_en=org.name_en
    )
    return CertificateOrder(
        profile=profile,
        subject=subject,
        public_key=public_key,
        organization_id=org.id,
        seal_request_id=row.id,
        hsm_key_id=row.hosted_key_id,
        extensions=eseal.eseal_extensions(profile, organization_identifier=identifier),
    )


def certificate_for_request(store: Store, request_uuid: str) -> Certificate | None:
    with store.session() as s:
        return s.scalars(
            select(Certificate).where(
                Certificate.seal_request_id == request_uuid,
                Certificate.status.in_(("issued", "revoked", "hold")),
            )
        ).first()
