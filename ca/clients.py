"""API clients, their bearer tokens and who may do what.

A token is random, shown once and stored only as its SHA-256. Authentication yields a
:class:`Principal`; authorization looks only at the principal, so an OpenID Connect bearer
token (e.g. gBizID) can later be mapped to a Principal without touching the rules.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import audit
from ca.errors import CAError, Forbidden, InvalidRequest, NotFound
from ca.models import ApiClient, Organization
from ca.store import Store

ROLES = ("school-system", "board-officer", "ca-operator", "auditor")
TOKEN_PREFIX = "kkn_"  # noqa: S105 - a public marker, not a secret

# Which organization kinds a role may be bound to.
_ROLE_KINDS = {
    "school-system": ("school",),
    "board-officer": ("board", "school_corporation"),
    "ca-operator": ("operator",),
    "auditor": ("operator", "board"),
}


class Unauthenticated(CAError):
    status = 401
    type = "auth/unauthenticated"
    title = "Authentication required"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the acting client, its organization and role."""

    client_id: int | None
    organization_id: int | None
    role: str
    name: str
    method: str = "token"
    # The person acting, when the caller is one (an OIDC ``sub`` after console login); dual
    # control compares it as well as ``client_id``.
    subject: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        ident = self.client_id if self.client_id is not None else self.name
        return f"{self.method}:{ident}:{self.name}"[:128]


class Authenticator(Protocol):
    def authenticate(self, session: Session, bearer: str) -> Principal | None: ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_client(
    session: Session,
    *,
    organization_id: int,
    role: str,
    name: str,
    actor: str,
    request_id: str | None = None,
) -> tuple[ApiClient, str]:
    """Create a client and return it with its token (the only time the token is seen)."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be one of {', '.join(ROLES)}")
    org = session.get(Organization, organization_id)
    if org is None:
        raise NotFound(f"organization {organization_id} not found")
    if org.status != "active":
        raise InvalidRequest(f"organization {organization_id} is {org.status}")
    if org.kind not in _ROLE_KINDS[role]:
        raise InvalidRequest(
            f"role {role} cannot be bound to a {org.kind} (allowed: {', '.join(_ROLE_KINDS[role])})"
        )
    if not name or len(name) > 128:
        raise InvalidRequest("name must be 1-128 characters")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    client = ApiClient(
        organization_id=organization_id, role=role, name=name, token_hash=token_hash(token)
    )
    session.add(client)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="client.created",
        organization_id=organization_id,
        object_type="api-client",
        object_id=str(client.id),
        request_id=request_id,
        details={"role": role, "name": name},
    )
    return client, token


def revoke_client(
    session: Session, client_id: int, *, actor: str, request_id: str | None = None
) -> None:
    client = session.get(ApiClient, client_id)
    if client is None:
        raise NotFound(f"API client {client_id} not found")
    if client.revoked_at is None:
        client.revoked_at = datetime.now(UTC)
        audit.record(
            session,
            actor=actor,
            action="client.revoked",
            organization_id=client.organization_id,
            object_type="api-client",
            object_id=str(client.id),
            request_id=request_id,
        )


class TokenAuthenticator:
    """Bearer tokens issued by :func:`create_client`."""

    def authenticate(self, session: Session, bearer: str) -> Principal | None:
        if not bearer.startswith(TOKEN_PREFIX) or len(bearer) > 200:
            return None
        digest = token_hash(bearer)
        client = session.scalars(select(ApiClient).where(ApiClient.token_hash == digest)).first()
        if client is None or client.revoked_at is not None:
            return None
        if not hmac.compare_digest(client.token_hash, digest):
            return None
        org = session.get(Organization, client.organization_id)
        if org is None or org.status != "active":
            return None
        return Principal(client.id, client.organization_id, client.role, client.name)


def authenticate(
    session: Session,
    header: str | None,
    authenticators: tuple[Authenticator, ...] = (TokenAuthenticator(),),
) -> Principal:
    if not header or not header.startswith("Bearer "):
        raise Unauthenticated("send 'Authorization: Bearer <token>'")
    bearer = header[len("Bearer ") :].strip()
    for authenticator in authenticators:
        principal = authenticator.authenticate(session, bearer)
        if principal is not None:
            return principal
    raise Unauthenticated("the bearer token is unknown, revoked or its organization inactive")


def deny(
    store: Store,
    principal: Principal,
    action: str,
    *,
    organization_id: int | None,
    why: str,
    object_type: str | None = None,
    object_id: str | None = None,
    request_id: str | None = None,
) -> Forbidden:
    """Audit a refused request and return the 403 to raise.

    Written in a unit of work of its own: the refused operation's transaction rolls back, but
    the refusal must stay on record.
    """
    with store.session() as s:
        audit.record(
            s,
            actor=principal.actor,
            action="access.denied",
            organization_id=organization_id,
            object_type=object_type,
            object_id=object_id,
            request_id=request_id,
            details={"attempted": action, "role": principal.role},
        )
    return Forbidden(why)


def require_role(principal: Principal, *roles: str) -> None:
    if principal.role not in roles:
        raise Forbidden(f"role {principal.role} may not do this (needs {' or '.join(roles)})")


def governs(session: Session, principal: Principal, org: Organization) -> bool:
    """Whether ``principal`` acts for ``org``: its own organization, a school its board runs,
    or anything for the CA operator."""
    if principal.role == "ca-operator":
        return True
    if org.id == principal.organization_id:
        return True
    if principal.role == "board-officer":
        return org.parent_id == principal.organization_id
    return False


def may_read(session: Session, principal: Principal, org: Organization) -> bool:
    """Whether ``principal`` may read ``org``'s records: whoever governs it, and auditors
    within their jurisdiction (a board's auditor: that board and its schools; the
    operator's auditor: everything)."""
    if governs(session, principal, org):
        return True
    if principal.role != "auditor" or principal.organization_id is None:
        return False
    bound = session.get(Organization, principal.organization_id)
    if bound is None:
        return False
    if bound.kind == "operator":
        return True
    return org.parent_id == bound.id


def same_actor(client_a: int | None, subject_a: str | None,
               client_b: int | None, subject_b: str | None) -> bool:
    """Whether two actions may have been taken by the same client or person (dual control).

    Unknown on both sides counts as the same: distinctness must be shown, not assumed.
    """
    if client_a is not None and client_a == client_b:
        return True
    if subject_a is not None and subject_a == subject_b:
        return True
    return client_a is None and client_b is None and (subject_a is None or subject_b is None)
