"""Seal requests: submitted by an organization's own systems, approved by others, issued.

The RA trust model (issue 9):

- Nobody outside an organization holds its seal key. A request with a CSR comes only from
  the organization's own client (a school's ``school-system``, a board's own ``board-officer``).
  Its board or the operator may start a request on its behalf only with a hosted key, which
  the signing side lets only the organization's own systems use (``ca.status.may_seal``).
- Dual control. The approver is never the requester (client, or person where known). A
  school's request is approved by an officer of the board running it or the operator; a
  board's (or school corporation's) own seal by an operator. The profile's
  ``approvals_required`` distinct approvals are collected before anything is issued.
- Check before accepting: what the e-seal profile needs from the registry is checked when the
  request is submitted (422), and a lint failure at approval is a 422 listing the findings,
  with the request ``failed``.

The RA composes the subject from the registry (never from the CSR). Every step is audited
with the acting client; refusals too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import audit, eseal, policy, registry
from ca.clients import Principal, deny, may_read, same_actor
from ca.errors import CAError, Conflict, InvalidRequest, NotFound
from ca.issuer import CertificateOrder, IssuingAuthority, LintFailed, issue
from ca.models import Certificate, Organization, SealRequest, SealRequestApproval, serial_hex
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
    if org.status == "pending":
        raise InvalidRequest(
            f"organization {org_id} is pending: the operator has not confirmed its registration"
        )
    if org.status != "active":
        raise InvalidRequest(f"organization {org_id} is {org.status}")
    return org


def _own(principal: Principal, org: Organization) -> bool:
    """The organization's own systems: the only ones that may hold (or use) its seal key."""
    return (principal.organization_id == org.id
            and principal.role in ("school-system", "board-officer"))


def _on_behalf(principal: Principal, org: Organization) -> bool:
    """The board running a school, or the operator: may start a hosted-key request only."""
    if principal.role == "ca-operator":
        return True
    return principal.role == "board-officer" and org.parent_id == principal.organization_id


def _preflight(profile: Profile, org: Organization) -> None:
    """What issuance will need from the registry, checked now so approval cannot fail on it."""
    identifier = registry.organization_identifier(org)
    if identifier is None:
        what = "a corporate number" + (" or a school code" if org.kind == "school" else "")
        raise InvalidRequest(
            f"organization {org.id} ({org.kind}) has no organizationIdentifier: the e-seal "
            f"profile needs {what} (EN 319 412-1 §5.1.4); ask the operator to register it"
        )
    try:
        eseal.eseal_subject(name_ja=org.name_ja, organization_identifier=identifier,
                            name_en=org.name_en)
        eseal.eseal_extensions(profile, organization_identifier=identifier)
    except ValueError as exc:
        raise InvalidRequest(f"organization {org.id} cannot be named in a seal: {exc}") from exc


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
    profile = _profile(profiles, new.profile)
    if (new.csr is None) == (new.hosted_algorithm is None):
        raise InvalidRequest("give exactly one of 'csr' or 'key': {'hosted': true, ...}")
    with store.session() as s:
        org = s.get(Organization, new.organization_id)
        if org is None:
            raise NotFound(f"organization {new.organization_id} not found")
        own, on_behalf = _own(principal, org), _on_behalf(principal, org)
    if not own and not on_behalf:
        raise refuse("you may request seals only for your own organization")
    if not own and new.csr is not None:
        raise refuse("a request with a CSR must come from the organization's own systems: "
                     "nobody outside an organization holds its seal key (ask for a hosted key)")
    with store.session() as s:
        _preflight(profile, _sealable(s, new.organization_id))

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
                requested_by_subject=principal.subject,
                approvals_required=profile.approvals_required,
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
                    "requested_by": principal.client_id,
                    "on_behalf": not own,
                    "approvals_required": profile.approvals_required,
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
        visible = may_read(s, principal, org)
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
                     request_id: str | None, *, requester_may: bool = False) -> None:
    """404 for an unknown request; an audited 403 unless ``principal`` may decide it.

    ``requester_may``: the requester may withdraw (reject) its own request, never approve it.
    """
    with store.session() as s:
        row = s.get(SealRequest, request_uuid)
        if row is None:
            raise NotFound(f"seal request {request_uuid} not found")
        org = s.get(Organization, row.organization_id)
        assert org is not None
        allowed = _decider_may(principal, org) or (
            requester_may and principal.client_id is not None
            and principal.client_id == row.requested_by)
        org_id, kind = row.organization_id, org.kind
    if not allowed:
        who = ("an officer of the board running this school or the operator"
               if kind == "school" else "the CA operator")
        raise deny(store, principal, action, organization_id=org_id, object_type="seal-request",
                   object_id=request_uuid, request_id=request_id,
                   why=f"only {who} may decide this request")


def _decider_may(principal: Principal, org: Organization) -> bool:
    """A school's request: its board's officers or the operator. A board's (or school
    corporation's) own seal: the operator only, so no organization approves itself."""
    if principal.role == "ca-operator":
        return True
    return (org.kind == "school" and principal.role == "board-officer"
            and org.parent_id == principal.organization_id)


def approvals_of(store: Store, request_uuid: str) -> list[SealRequestApproval]:
    with store.session() as s:
        return list(s.scalars(
            select(SealRequestApproval)
            .where(SealRequestApproval.seal_request_id == request_uuid)
            .order_by(SealRequestApproval.id)
        ))


def reject(
    store: Store,
    keys: KeyManager,
    principal: Principal,
    request_uuid: str,
    reason: str | None,
    *,
    request_id: str | None = None,
) -> SealRequest:
    """Refuse (or, for the requester, withdraw) a pending request; a hosted key is destroyed."""
    _require_decider(store, principal, request_uuid, "seal-request.reject", request_id,
                     requester_may=True)
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
            details={"reason": row.reason, "requested_by": row.requested_by,
                     "rejected_by": principal.client_id},
        )
    if row.hosted_key_id:
        try:
            keys.destroy(keys.find(key_id=bytes.fromhex(row.hosted_key_id)))
        except HsmKeyNotFound:
            pass  # already gone: the rejection stands either way
    return row


class LintRefused(CAError):
    """Pre-issuance lint refused the certificate: the request is ``failed``, the caller told
    which findings, never a 500."""

    status = 422
    type = "ca/lint-failed"
    title = "Certificate failed pre-issuance linting"

    def __init__(self, detail: str, findings: list[dict[str, str | None]]) -> None:
        super().__init__(detail)
        self.findings = findings

    def members(self) -> dict[str, Any]:
        return {"findings": self.findings}


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
) -> tuple[SealRequest, x509.Certificate | None]:
    """Record one approval; with enough distinct approvers, issue.

    The request moves pending -> approved -> issued (or failed); while approvals are
    missing it stays pending and the certificate is ``None``.
    """
    _require_decider(store, principal, request_uuid, "seal-request.approve", request_id)

    refusal: str | None = None
    order: CertificateOrder | None = None
    with store.session() as s:
        row = s.get(SealRequest, request_uuid, with_for_update=True)
        assert row is not None
        if row.status != "pending":
            raise Conflict(f"seal request is already {row.status}")
        earlier = list(s.scalars(select(SealRequestApproval).where(
            SealRequestApproval.seal_request_id == row.id).order_by(SealRequestApproval.id)))
        if same_actor(principal.client_id, principal.subject,
                      row.requested_by, row.requested_by_subject):
            refusal = "dual control: the requester cannot approve its own request"
        elif any(same_actor(principal.client_id, principal.subject, a.client_id, a.subject)
                 for a in earlier):
            refusal = "dual control: you have already approved this request"
        else:
            org = _sealable(s, row.organization_id)
            policy.check_key_unused(s, row.public_key_sha256, org.id, exclude_request=row.id)
            s.add(SealRequestApproval(seal_request_id=row.id, client_id=principal.client_id,
                                      subject=principal.subject, actor=principal.actor))
            approvers = [a.client_id for a in earlier] + [principal.client_id]
            details = {"requested_by": row.requested_by, "approved_by": approvers,
                       "approvals_required": row.approvals_required}
            if len(approvers) < row.approvals_required:
                audit.record(s, actor=principal.actor, action="seal-request.approval-recorded",
                             organization_id=org.id, object_type="seal-request",
                             object_id=row.id, request_id=request_id, details=details)
            else:
                row.status = "approved"
                row.decided_by = principal.client_id
                row.decided_at = datetime.now(UTC)
                audit.record(s, actor=principal.actor, action="seal-request.approved",
                             organization_id=org.id, object_type="seal-request",
                             object_id=row.id, request_id=request_id, details=details)
                try:
                    order = _order(s, row, org, keys, profiles)
                except ValueError as exc:  # rolled back: the request stays pending
                    raise InvalidRequest(f"cannot build the certificate: {exc}") from exc
    if refusal is not None:
        raise deny(store, principal, "seal-request.approve", organization_id=row.organization_id,
                   object_type="seal-request", object_id=request_uuid, request_id=request_id,
                   why=refusal)
    if order is None:
        return row, None

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
        if isinstance(exc, LintFailed):
            raise LintRefused(
                f"the certificate failed pre-issuance linting; request {request_uuid} is failed",
                [{"severity": f.severity, "code": f.code, "message": f.message, "path": f.path}
                 for f in exc.findings],
            ) from exc
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
