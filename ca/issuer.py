"""The issuer: builds, lints and signs exactly what the RA approved, nothing more.

Issuance order (Boulder's): reserve the serial -> build and lint the certificate signed by a
throwaway key -> store the linted to-be-signed certificate and audit -> sign in the HSM ->
check the signed TBS is byte-identical to the linted one -> store the certificate.
A crash anywhere leaves a row saying what was intended, never an unrecorded certificate.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ca import audit, lint, transparency
from ca.errors import CAError, DuplicateEntry
from ca.faults import pause_point
from ca.models import Certificate, serial_hex
from ca.profiles import Profile
from ca.store import Store


class LintFailed(CAError):
    status = 500
    type = "ca/lint-failed"
    title = "Certificate failed pre-issuance linting"

    def __init__(self, detail: str, findings: list[lint.Finding]) -> None:
        super().__init__(detail)
        self.findings = findings


class SigningFailed(CAError):
    status = 503
    type = "ca/signing-failed"
    title = "Certificate could not be signed"


@dataclass(frozen=True)
class IssuingAuthority:
    """A CA that signs: its name (used in URLs), certificate and HSM-backed key.

    ``certificate`` is None only while the root signs itself in the key ceremony.
    """

    name: str
    key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate | None
    base_url: str
    subject: x509.Name | None = None

    @property
    def issuer_name(self) -> x509.Name:
        if self.certificate is not None:
            return self.certificate.subject
        assert self.subject is not None
        return self.subject

    @property
    def lint_exemptions(self) -> tuple[str, ...]:
        """A development CA on a loopback URL may publish AIA/CDP/OCSP there; ETSI calls
        that an internal domain name. Every other finding still blocks, and a CA with a
        real host name gets no exemption at all."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        loopback = host == "localhost" or host.endswith(".localhost")
        try:
            loopback = loopback or ipaddress.ip_address(host).is_loopback
        except ValueError:
            pass
        return ("etsi.internal_domain_name",) if loopback else ()

    @property
    def ca_url(self) -> str:
        return f"{self.base_url}/pki/{self.name}.crt"

    @property
    def crl_url(self) -> str:
        return f"{self.base_url}/pki/{self.name}.crl"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base_url}/ocsp"


@dataclass(frozen=True)
class CertificateOrder:
    """What the RA approved: profile, subject and key, plus bookkeeping for the store."""

    profile: Profile
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    organization_id: int | None = None
    seal_request_id: str | None = None
    hsm_key_id: str | None = None
    not_after: datetime | None = None
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = field(default=())


def hash_for(key: Any) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


_throwaway_lock = threading.Lock()
_throwaway: dict[tuple[str, int], CertificateIssuerPrivateKeyTypes] = {}


def throwaway_key(like: Any) -> CertificateIssuerPrivateKeyTypes:
    """An in-memory key of the same type and size as ``like``, for lint-only signatures."""
    if isinstance(like, ec.EllipticCurvePrivateKey):
        spec = ("ec", like.curve.key_size)
    elif isinstance(like, rsa.RSAPrivateKey):
        spec = ("rsa", like.key_size)
    else:
        raise CAError(f"unsupported issuer key type {type(like).__name__}")
    with _throwaway_lock:
        if spec not in _throwaway:
            if spec[0] == "ec":
                curve = {256: ec.SECP256R1(), 384: ec.SECP384R1(), 521: ec.SECP521R1()}[spec[1]]
                _throwaway[spec] = ec.generate_private_key(curve)
            else:
                _throwaway[spec] = rsa.generate_private_key(65537, spec[1])
        return _throwaway[spec]


def random_serial() -> int:
    """128 bits from the CSPRNG, positive and non-zero (CA/B and ETSI EN 319 411-1)."""
    while True:
        serial = secrets.randbits(128)
        if serial:
            return serial


def public_key_sha256(public_key: CertificatePublicKeyTypes) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


_KU_ARGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


def build(
    authority: IssuingAuthority,
    order: CertificateOrder,
    serial: int,
    not_before: datetime,
) -> x509.CertificateBuilder:
    profile = order.profile
    not_after = order.not_after or not_before + timedelta(days=profile.validity_days)
    if authority.certificate is not None:
        # A certificate never outlives its issuer (RFC 5280 path validation would fail).
        not_after = min(not_after, authority.certificate.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(order.subject)
        .issuer_name(authority.issuer_name)
        .public_key(order.public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=profile.ca, path_length=profile.path_length),
            critical=profile.basic_constraints_critical,
        )
    )
    usages = {name: name in profile.key_usages for name in _KU_ARGS}
    builder = builder.add_extension(
        x509.KeyUsage(encipher_only=False, decipher_only=False, **usages),
        critical=profile.key_usage_critical,
    )
    if profile.extended_key_usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [x509.ObjectIdentifier(oid) for oid in profile.extended_key_usages]
            ),
            critical=profile.extended_key_usage_critical,
        )
    if profile.subject_key_identifier:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(order.public_key), critical=False
        )
    if profile.authority_key_identifier:
        issuer_public = authority.key.public_key()
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
            critical=False,
        )
    if profile.authority_information_access:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier(authority.ca_url),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(authority.ocsp_url),
                    ),
                ]
            ),
            critical=False,
        )
    if profile.crl_distribution_points:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(authority.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    if profile.certificate_policies:
        builder = builder.add_extension(
            x509.CertificatePolicies(
                [
                    x509.PolicyInformation(x509.ObjectIdentifier(oid), None)
                    for oid in profile.certificate_policies
                ]
            ),
            critical=False,
        )
    if profile.ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    for ext, critical in order.extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder


def _reserve(
    store: Store, authority: IssuingAuthority, order: CertificateOrder, not_before: datetime
) -> tuple[int, int]:
    """Insert a 'reserved' row under a fresh serial, retrying on the (rare) collision."""
    for _ in range(5):
        serial = random_serial()
        try:
            with store.session() as s:
                row = Certificate(
                    issuer_name=authority.name,
                    serial=serial_hex(serial),
                    kind=order.profile.kind,
                    subject=order.subject.rfc4514_string(),
                    organization_id=order.organization_id,
                    seal_request_id=order.seal_request_id,
                    not_before=not_before,
                    not_after=not_before,
                    status="reserved",
                    public_key_sha256=public_key_sha256(order.public_key),
                    hsm_key_id=order.hsm_key_id,
                )
                s.add(row)
                s.flush()
                return serial, row.id
        except (IntegrityError, DuplicateEntry):  # serial drawn twice: draw again
            continue
    raise CAError("could not reserve a unique serial number")


def _fail(
    store: Store, row_id: int, *, actor: str, action: str, reason: str, request_id: str | None
) -> None:
    with store.session() as s:
        row = s.get(Certificate, row_id)
        assert row is not None
        row.status = "failed"
        audit.record(
            s,
            actor=actor,
            action=action,
            organization_id=row.organization_id,
            object_type="certificate",
            object_id=f"{row.issuer_name}/{row.serial}",
            request_id=request_id,
            details={"reason": reason[:500]},
        )


def issue(
    store: Store,
    authority: IssuingAuthority,
    order: CertificateOrder,
    *,
    actor: str,
    request_id: str | None = None,
    now: datetime | None = None,
    lint_before_signing: bool = True,
) -> x509.Certificate:
    """Issue one certificate in the order described in the module docstring."""
    not_before = (now or datetime.now(UTC)).replace(microsecond=0)
    pause_point("issue.before-reserve")
    serial, row_id = _reserve(store, authority, order, not_before)
    builder = build(authority, order, serial, not_before)
    algorithm = hash_for(authority.key)

    precert = builder.sign(throwaway_key(authority.key), algorithm)
    if lint_before_signing:
        findings = lint.lint_for_profile(
            precert.public_bytes(serialization.Encoding.DER), order.profile.kind
        )
        bad = lint.blocking(findings, authority.lint_exemptions)
        if bad:
            detail = "; ".join(str(f) for f in bad)
            _fail(
                store,
                row_id,
                actor=actor,
                action="certificate.lint_failed",
                reason=detail,
                request_id=request_id,
            )
            raise LintFailed(f"refused to issue: {detail}", bad)

    with store.session() as s:
        row = s.get(Certificate, row_id, with_for_update=True)
        assert row is not None
        _still(row, "reserved")
        row.tbs_der = precert.tbs_certificate_bytes
        row.not_after = precert.not_valid_after_utc
        row.status = "linted"
        transparency.record_certificate(
            s, kind="precertificate", der=precert.tbs_certificate_bytes,
            issuer_name=authority.name, serial=row.serial, subject=row.subject,
            organization_id=order.organization_id)
        audit.record(
            s,
            actor=actor,
            action="certificate.signing",
            organization_id=order.organization_id,
            object_type="certificate",
            object_id=f"{authority.name}/{row.serial}",
            digest=hashlib.sha256(precert.tbs_certificate_bytes).hexdigest(),
            request_id=request_id,
            details={"profile": order.profile.name, "subject": row.subject},
        )

    pause_point("issue.linted")
    try:
        cert = builder.sign(authority.key, algorithm)
    except Exception as exc:
        _fail(
            store,
            row_id,
            actor=actor,
            action="certificate.signing_failed",
            reason=f"{type(exc).__name__}: {exc}",
            request_id=request_id,
        )
        raise SigningFailed(f"HSM signing failed: {type(exc).__name__}") from exc
    if cert.tbs_certificate_bytes != precert.tbs_certificate_bytes:
        _fail(
            store,
            row_id,
            actor=actor,
            action="certificate.signing_failed",
            reason="signed TBS differs from linted TBS",
            request_id=request_id,
        )
        raise SigningFailed("signed certificate differs from the linted one")

    pause_point("issue.signed")
    der = cert.public_bytes(serialization.Encoding.DER)
    with store.session() as s:
        row = s.get(Certificate, row_id, with_for_update=True)
        assert row is not None
        _still(row, "linted")  # never store a certificate the reconciler declared not issued
        row.der = der
        row.status = "issued"
        transparency.record_certificate(
            s, kind="certificate", der=der, issuer_name=authority.name, serial=row.serial,
            subject=row.subject, organization_id=order.organization_id)
        audit.record(
            s,
            actor=actor,
            action="certificate.issued",
            organization_id=order.organization_id,
            object_type="certificate",
            object_id=f"{authority.name}/{row.serial}",
            digest=hashlib.sha256(der).hexdigest(),
            request_id=request_id,
            details={"profile": order.profile.name},
        )
    pause_point("issue.stored")
    return cert


def _still(row: Certificate, expected: str) -> None:
    """The row is where this issuance left it; else ``ca.reconcile`` took it over (this
    worker stalled past the grace period) and its decision stands."""
    if row.status != expected:
        raise SigningFailed(f"certificate {row.serial} is {row.status}, not {expected}: "
                            "abandoned and reconciled while this issuance stalled")


def find_issued(store: Store, issuer_name: str, serial: int) -> Certificate | None:
    with store.session() as s:
        return s.scalars(
            select(Certificate).where(
                Certificate.issuer_name == issuer_name, Certificate.serial == serial_hex(serial)
            )
        ).one_or_none()
