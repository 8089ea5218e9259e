"""Read-only listings for people (the web console): what a principal may see, in one place.

The console's handlers call these plain functions the way ca/api.py calls enrollment and
registry: no query lives in a handler. Jurisdiction follows ``ca.clients.may_read``: the
operator (and the operator's auditor) sees everything, a board its own records and its
schools'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ca.clients import Principal
from ca.models import (
    ApiClient,
    AuditEntry,
    Certificate,
    Crl,
    OcspResponse,
    Organization,
    SealRequest,
)

# Organizations a person may log in for (schools act through their systems' tokens).
PERSON_KINDS = ("board", "school_corporation", "operator")


def by_corporate_number(session: Session, number: str) -> Organization | None:
    """The active board, school corporation or operator with this 法人番号, if exactly one."""
    if not (len(number) == 13 and number.isascii() and number.isdigit()):
        return None
    rows = list(session.scalars(select(Organization).where(
        Organization.corporate_number == number, Organization.status == "active",
        Organization.kind.in_(PERSON_KINDS))).all())
    return rows[0] if len(rows) == 1 else None


def _sees_everything(session: Session, principal: Principal) -> bool:
    if principal.role == "ca-operator":
        return True
    if principal.role == "auditor" and principal.organization_id is not None:
        bound = session.get(Organization, principal.organization_id)
        return bound is not None and bound.kind == "operator"
    return False


def jurisdiction(session: Session, principal: Principal) -> list[int] | None:
    """Organization ids the principal may read; ``None`` means all of them."""
    if _sees_everything(session, principal):
        return None
    own = principal.organization_id
    if own is None:
        return []
    children = session.scalars(select(Organization.id).where(Organization.parent_id == own))
    return [own, *children]


def _within(column: Any, ids: list[int] | None) -> Any:
    return True if ids is None else column.in_(ids)


def pending_requests(session: Session, principal: Principal
                     ) -> list[tuple[SealRequest, Organization]]:
    ids = jurisdiction(session, principal)
    rows = session.execute(
        select(SealRequest, Organization)
        .join(Organization, Organization.id == SealRequest.organization_id)
        .where(SealRequest.status == "pending", _within(SealRequest.organization_id, ids))
        .order_by(SealRequest.created_at)).all()
    return [(r, o) for r, o in rows]


def schools(session: Session, principal: Principal) -> list[Organization]:
    """The schools of the principal's board (all of them for the operator), pending first."""
    query = select(Organization).where(Organization.kind == "school")
    if not _sees_everything(session, principal):
        query = query.where(Organization.parent_id == principal.organization_id)
    return list(session.scalars(query.order_by(Organization.status != "pending",
                                               Organization.name_ja)).all())


def pending_schools(session: Session) -> list[tuple[Organization, Organization | None]]:
    """Schools a board registered that the operator has not confirmed yet, with their board."""
    rows = session.scalars(select(Organization).where(
        Organization.kind == "school", Organization.status == "pending")
        .order_by(Organization.created_at)).all()
    return [(r, session.get(Organization, r.parent_id) if r.parent_id else None) for r in rows]


def organizations(session: Session, *kinds: str) -> list[Organization]:
    return list(session.scalars(select(Organization).where(Organization.kind.in_(kinds))
                                .order_by(Organization.kind, Organization.name_ja)).all())


def certificates(session: Session, principal: Principal, limit: int = 200
                 ) -> list[tuple[Certificate, Organization]]:
    """E-seal certificates (signed ones only) of the jurisdiction, newest first."""
    ids = jurisdiction(session, principal)
    rows = session.execute(
        select(Certificate, Organization)
        .join(Organization, Organization.id == Certificate.organization_id)
        .where(Certificate.kind == "eseal", Certificate.der.is_not(None),
               _within(Certificate.organization_id, ids))
        .order_by(Certificate.created_at.desc()).limit(limit)).all()
    return [(c, o) for c, o in rows]


def audit_trail(session: Session, principal: Principal, limit: int = 200) -> list[AuditEntry]:
    """Audit entries of the jurisdiction, newest first. Entries hold digests, never content."""
    ids = jurisdiction(session, principal)
    query = select(AuditEntry)
    if ids is not None:
        query = query.where(AuditEntry.organization_id.in_(ids))
    return list(session.scalars(query.order_by(AuditEntry.seq.desc()).limit(limit)).all())


def api_clients(session: Session) -> list[tuple[ApiClient, Organization]]:
    rows = session.execute(select(ApiClient, Organization)
                           .join(Organization, Organization.id == ApiClient.organization_id)
                           .order_by(ApiClient.revoked_at.is_not(None), ApiClient.id)).all()
    return [(c, o) for c, o in rows]


@dataclass(frozen=True)
class Freshness:
    """One status artefact: when it must be renewed by, and whether it still is fresh."""

    what: str
    next_update: datetime | None
    fresh: bool


def status_freshness(session: Session, now: datetime | None = None) -> list[Freshness]:
    """CRLs (latest per issuer), the stalest OCSP response, and the TSA / trust-list signer
    certificates' validity: what an operator checks to know relying parties are served."""
    now = now or datetime.now(UTC)
    out: list[Freshness] = []
    latest = session.execute(select(Crl.issuer_name, func.max(Crl.next_update))
                             .group_by(Crl.issuer_name)).all()
    for issuer, next_update in latest:
        out.append(Freshness(f"CRL {issuer}", next_update, next_update > now))
    stalest = session.scalar(select(func.min(OcspResponse.next_update)))
    out.append(Freshness("OCSP", stalest, stalest is not None and stalest > now))
    for kind, label in (("tsa", "TSA"), ("tsl", "trust list")):
        until = session.scalar(select(func.max(Certificate.not_after)).where(
            Certificate.kind == kind, Certificate.status == "issued"))
        out.append(Freshness(label, until, until is not None and until > now))
    return out
