"""The read-mostly facade the signing side may use (design: ``signing`` -> ``ca.status`` only).

It hands out credentials (HSM key id + certificate chain as DER), revocation artefacts,
authentication and the few writes sealing needs (TSA serials, audit entries). DER bytes and
plain values cross the boundary, never ORM rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from ca import audit as _audit
from ca import crl as _crl
from ca import ocsp as _ocsp
from ca import strictjson
from ca import transparency as _transparency
from ca.clients import Principal, Unauthenticated, authenticate
from ca.errors import CAError, Conflict, DuplicateEntry, Forbidden, InvalidRequest, NotFound
from ca.faults import pause_point
from ca.groupcommit import TsaSerialRegister
from ca.models import Certificate, Organization, TsaSerial, UsedToken, serial_hex
from ca.store import Store
from hsm.api import KeyManager

__all__ = [
    "CAError",
    "Conflict",
    "Credential",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "OwnStatus",
    "Principal",
    "SealReceipt",
    "Store",
    "TsaSerialRegister",
    "Unauthenticated",
    "authenticate_header",
    "ca_chain",
    "check_actor",
    "consume_token",
    "crl_der",
    "may_seal",
    "ocsp_response_der",
    "pause_point",
    "record",
    "record_seals",
    "record_tsa_serial",
    "seal_credential",
    "strictjson",
    "trust_list_credential",
    "tsa_credential",
]


@dataclass(frozen=True)
class Credential:
    """A key in our HSM and its certificate chain (leaf first, root last), as DER."""

    key_id: bytes
    algorithm: str
    certificate: bytes
    chain: tuple[bytes, ...]
    serial: str
    issuer_name: str
    organization_id: int | None
    organization_name: str | None


_chains: dict[tuple[bytes, bytes], tuple[bytes, ...]] = {}


def _chain_for(session: Any, leaf: x509.Certificate) -> tuple[bytes, ...]:
    """Issuer certificates up to the root, found by subject in our store.

    Cached by (issuer name, authority key id): sealing asks for it on every request, and
    the CA certificates above a leaf do not change while it is valid.
    """
    try:
        aki = leaf.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier).value.key_identifier or b""
    except x509.ExtensionNotFound:
        aki = b""
    key = (leaf.issuer.public_bytes(), aki)
    cached = _chains.get(key)
    if cached is not None:
        return cached
    chain = _find_chain(session, leaf)
    if chain:
        _chains[key] = chain
    return chain


def _find_chain(session: Any, leaf: x509.Certificate) -> tuple[bytes, ...]:
    out: list[bytes] = []
    current = leaf
    for _ in range(4):
        if current.issuer == current.subject:
            break
        rows = session.scalars(
            select(Certificate).where(
                Certificate.kind.in_(("root", "issuing")),
                Certificate.status == "issued",
                Certificate.der.is_not(None),
            )
        ).all()
        parent = None
        for row in rows:
            cert = x509.load_der_x509_certificate(row.der)
            if cert.subject == current.issuer:
                try:
                    current.verify_directly_issued_by(cert)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                parent = cert
                out.append(row.der)
                break
        if parent is None:
            break
        current = parent
    return tuple(out)


def _credential(session: Any, row: Certificate) -> Credential:
    assert row.der is not None and row.hsm_key_id is not None
    leaf = x509.load_der_x509_certificate(row.der)
    org = session.get(Organization, row.organization_id) if row.organization_id else None
    return Credential(
        key_id=bytes.fromhex(row.hsm_key_id),
        algorithm=type(leaf.public_key()).__name__,
        certificate=row.der,
        chain=(row.der, *_chain_for(session, leaf)),
        serial=row.serial,
        issuer_name=row.issuer_name,
        organization_id=row.organization_id,
        organization_name=org.name_ja if org else None,
    )


def _usable(query: Any, now: datetime) -> Any:
    return query.where(
        Certificate.status == "issued",
        Certificate.der.is_not(None),
        Certificate.hsm_key_id.is_not(None),
        Certificate.not_before <= now,
        Certificate.not_after > now,
    )


def tsa_credential(store: Store, now: datetime | None = None) -> Credential:
    """The newest valid TSA certificate whose key we hold."""
    now = now or datetime.now(UTC)
    with store.session() as s:
        row = s.scalars(
            _usable(select(Certificate).where(Certificate.kind == "tsa"), now).order_by(
                Certificate.not_before.desc()
            )
        ).first()
        if row is None:
            raise NotFound("no valid TSA certificate; run `kakuin init`")
        return _credential(s, row)


def trust_list_credential(store: Store, now: datetime | None = None) -> Credential:
    """The newest valid trust-list signer (EKU id-tsl-kp-tslSigning) whose key we hold."""
    now = now or datetime.now(UTC)
    with store.session() as s:
        row = s.scalars(_usable(select(Certificate).where(Certificate.kind == "tsl"), now)
                        .order_by(Certificate.not_before.desc())).first()
        if row is None:
            raise NotFound("no trust-list signer certificate yet (the scheduler issues one)")
        return _credential(s, row)


def seal_credential(store: Store, organization_id: int, now: datetime | None = None) -> Credential:
    """The organization's newest valid e-seal certificate with a key hosted in our HSM."""
    now = now or datetime.now(UTC)
    with store.session() as s:
        row = s.scalars(
            _usable(
                select(Certificate).where(
                    Certificate.kind == "eseal", Certificate.organization_id == organization_id
                ),
                now,
            ).order_by(Certificate.not_before.desc())
        ).first()
        if row is None:
            raise NotFound(f"organization {organization_id} has no valid hosted e-seal")
        return _credential(s, row)


def ca_chain(store: Store) -> tuple[bytes, ...]:
    """The issuing CA and root certificates (DER), issuing first."""
    with store.session() as s:
        rows = s.scalars(
            select(Certificate)
            .where(
                Certificate.kind.in_(("issuing", "root")),
                Certificate.status == "issued",
                Certificate.der.is_not(None),
            )
            .order_by(Certificate.kind)
        ).all()
        return tuple(r.der for r in rows if r.der)


def crl_der(store: Store, issuer_name: str) -> bytes | None:
    row = _crl.latest(store, issuer_name)
    return row.der if row is not None else None


def ocsp_response_der(
    store: Store, keys: KeyManager, issuer_name: str, certificate: bytes, issuer: bytes
) -> bytes:
    """The OCSP response a relying party would get for ``certificate`` (pre-signed when
    possible), for embedding as long-term validation data."""
    request = (
        x509_ocsp.OCSPRequestBuilder()
        .add_certificate(
            x509.load_der_x509_certificate(certificate),
            x509.load_der_x509_certificate(issuer),
            hashes.SHA256(),
        )
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    result = _ocsp.Responder.load(store, keys, issuer_name).respond(request)
    return result.der


def authenticate_header(store: Store, header: str | None) -> Principal:
    with store.session() as s:
        return authenticate(s, header)


def may_seal(store: Store, principal: Principal, organization_id: int) -> bool:
    """Only the organization's own systems seal with its hosted key: not its board, not the
    operator (a seal says *this organization* issued the document)."""
    return (
        principal.role in ("school-system", "board-officer")
        and principal.organization_id == organization_id
    )


def record(
    store: Store,
    *,
    actor: str,
    action: str,
    organization_id: int | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    digest: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Append an audit entry (digests, organization, actor, time: never content)."""
    with store.session() as s:
        _audit.record(
            s,
            actor=actor,
            action=action,
            organization_id=organization_id,
            object_type=object_type,
            object_id=object_id,
            digest=digest,
            request_id=request_id,
            details=details,
        )


SealReceipt = _transparency.SealReceipt


def check_actor(actor: str | None) -> str | None:
    """The optional pseudonymous staff reference (1-64 printable ASCII) or a 422."""
    return _transparency.check_actor(actor)


def record_seals(
    store: Store,
    principal: Principal,
    organization_id: int,
    digests: list[str],
    *,
    kind: str,
    level: str | None,
    actor: str | None,
    request_id: str | None,
    action: str,
    object_type: str,
    object_id: str | None = None,
    digest: str | None = None,
    details: dict[str, Any] | None = None,
) -> list[SealReceipt]:
    """One seal event per document digest (with its transparency commitment) and one audit
    entry, in one transaction; the receipts (salt, commitment) go back to the sealer.

    A person signed in (console, OIDC) is the actor when the caller names none."""
    check_actor(actor)
    if actor is None and principal.subject is not None:
        actor = _transparency.actor_from_subject(principal.subject)
    with store.session() as s:
        receipts = [
            _transparency.record_seal(
                s, principal=principal, organization_id=organization_id, document_sha256=d,
                kind=kind, level=level, actor=actor, request_id=request_id)
            for d in digests
        ]
        _audit.record(
            s, actor=principal.actor, action=action, organization_id=organization_id,
            object_type=object_type, object_id=object_id, digest=digest,
            request_id=request_id,
            details={**(details or {}), **({"staff": actor} if actor is not None else {})},
        )
    return receipts


def consume_token(store: Store, token_id: str, *, purpose: str, expires_at: datetime) -> bool:
    """Spend a single-use token; False when it was already spent (by any worker)."""
    if not token_id or len(token_id) > 64:
        raise InvalidRequest("token id must be 1-64 characters")
    try:
        with store.session() as s:
            s.add(UsedToken(token_id=token_id, purpose=purpose[:32], expires_at=expires_at))
    except (IntegrityError, DuplicateEntry):
        return False
    return True


def record_tsa_serial(
    store: Store,
    serial: int,
    *,
    imprint_hex: str,
    hash_algorithm: str,
    policy_oid: str,
    issued_at: datetime,
    register: TsaSerialRegister | None = None,
) -> None:
    """Reserve a timestamp serial; a duplicate is a Conflict (the caller draws again).

    A Core insert, not the ORM: it runs once per token and the unit-of-work machinery was a
    measurable part of the TSA's time (bench/tsa.py). With ``register`` the insert joins the
    concurrent ones in one commit (``ca.groupcommit``); it is durable when this returns.
    """
    row = {"serial": serial_hex(serial), "issued_at": issued_at, "imprint_sha256": imprint_hex,
           "hash_algorithm": hash_algorithm, "policy_oid": policy_oid}
    if register is not None:
        register.record(row)
        return
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(TsaSerial).values(**row))
    except IntegrityError as exc:
        raise Conflict("timestamp serial already used") from exc


_CRL_PATH = re.compile(r"/pki/([A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\.crl")


class OwnStatus:
    """Answers the OCSP and CRL URLs written into our own certificates, in process: the DER our
    HTTP endpoints (``POST /ocsp``, ``GET /ocsp/<b64>``, ``GET /pki/<ca>.crl``) would send.

    Why: the verifier runs in the same workers that serve those endpoints; fetching them over
    HTTP made each verification wait for a second free worker (two concurrent verifications on
    two sync workers deadlocked). Not cached here: a revocation is seen at once.
    """

    def __init__(self, store: Store, keys: KeyManager, base_url: str, issuing_name: str) -> None:
        self.store = store
        self.base_url = base_url.rstrip("/")
        self._responder = _ocsp.ResponderCache(store, keys, issuing_name)

    def __call__(self, url: str, body: bytes | None) -> bytes | None:
        """The answer for ``url`` (``body``: an OCSP request to POST, None for GET), or None
        when ``url`` is not one of ours."""
        if not self.base_url or not url.startswith(self.base_url + "/"):
            return None
        path = urlsplit(url[len(self.base_url):]).path
        if path in ("/ocsp", "/ocsp/"):
            return self._responder.respond(body).der if body is not None else \
                _ocsp.MALFORMED.der
        if path.startswith("/ocsp/") and body is None:
            der = _ocsp.decode_get(unquote(path[len("/ocsp/"):]))
            return (_ocsp.MALFORMED if der is None else self._responder.respond(der)).der
        match = _CRL_PATH.fullmatch(path)
        if match and body is None:
            row = _crl.latest(self.store, match.group(1))
            if row is None:
                raise NotFound(f"no CRL published for {match.group(1)!r}")
            return row.der
        return None
