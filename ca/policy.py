"""The registration authority's checks on keys and CSRs.

The RA decides; the issuer only signs what passed here. The certificate subject never comes
from the CSR: it is composed from the registry (see ``ca.enrollment``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ca.errors import CAError, Conflict
from ca.models import Certificate, SealRequest

MAX_CSR_BYTES = 16 * 1024
MAX_RSA_BITS = 8192
_CURVES = {"secp256r1": "ECDSA-P256", "secp384r1": "ECDSA-P384"}


class MalformedCSR(CAError):
    status = 400
    type = "ca/malformed-csr"
    title = "CSR cannot be parsed"


class CSRSignatureInvalid(CAError):
    status = 422
    type = "ca/csr-signature-invalid"
    title = "CSR signature does not verify (no proof of possession)"


class KeyRejected(CAError):
    status = 422
    type = "ca/key-rejected"
    title = "Public key not acceptable"


class KeyInUse(Conflict):
    type = "ca/key-in-use"
    title = "Public key already certified elsewhere or compromised"


@dataclass(frozen=True)
class AcceptedKey:
    public_key: CertificatePublicKeyTypes
    algorithm: str  # "RSA-2048" ... "ECDSA-P384"
    spki_sha256: str


def parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A PKCS#10 CSR from PEM or DER, size-limited."""
    if len(data) > MAX_CSR_BYTES:
        raise MalformedCSR(f"CSR is {len(data)} bytes; the limit is {MAX_CSR_BYTES}")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise MalformedCSR(f"not a PKCS#10 certificate request: {exc}") from exc


def check_proof_of_possession(csr: x509.CertificateSigningRequest) -> None:
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms raise instead of returning False
        raise CSRSignatureInvalid(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise CSRSignatureInvalid("the CSR's signature does not verify with its public key")


def accept_key(public_key: object) -> AcceptedKey:
    """RSA 2048..8192 bits or ECDSA P-256/P-384; everything else is refused."""
    if isinstance(public_key, rsa.RSAPublicKey):
        bits = public_key.key_size
        if bits < 2048:
            raise KeyRejected(f"RSA-{bits} is too weak; at least 2048 bits are required")
        if bits > MAX_RSA_BITS:
            raise KeyRejected(f"RSA-{bits} exceeds the {MAX_RSA_BITS}-bit maximum")
        if public_key.public_numbers().e != 65537:
            raise KeyRejected("RSA public exponent must be 65537")
        algorithm = f"RSA-{bits}"
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in _CURVES:
            raise KeyRejected(f"curve {public_key.curve.name} is not accepted (P-256, P-384)")
        algorithm = _CURVES[public_key.curve.name]
    else:
        raise KeyRejected(
            f"{type(public_key).__name__.lstrip('_')} keys are not accepted "
            "(RSA >= 2048 or ECDSA P-256/P-384)"
        )
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return AcceptedKey(public_key, algorithm, hashlib.sha256(spki).hexdigest())


def check_key_unused(
    session: Session, spki_sha256: str, organization_id: int, *, exclude_request: str | None = None
) -> None:
    """Refuse a key compromised anywhere, or certified/requested for another organization."""
    compromised = session.scalars(
        select(Certificate.id).where(
            Certificate.public_key_sha256 == spki_sha256,
            Certificate.revocation_reason == "keyCompromise",
        )
    ).first()
    if compromised is not None:
        raise KeyInUse("this public key was revoked for keyCompromise and can never be certified")
    other = session.scalars(
        select(Certificate.id).where(
            Certificate.public_key_sha256 == spki_sha256,
            Certificate.status.in_(("issued", "revoked", "hold", "linted")),
            or_(
                Certificate.organization_id.is_(None),
                Certificate.organization_id != organization_id,
            ),
        )
    ).first()
    if other is not None:
        raise KeyInUse("this public key is already certified to another organization")
    query = select(SealRequest.id).where(
        SealRequest.public_key_sha256 == spki_sha256,
        SealRequest.organization_id != organization_id,
        SealRequest.status.in_(("pending", "approved", "issued")),
    )
    if exclude_request is not None:
        query = query.where(SealRequest.id != exclude_request)
    if session.scalars(query).first() is not None:
        raise KeyInUse("this public key is already requested by another organization")


def csr_key(data: bytes) -> AcceptedKey:
    """Parse a CSR, check proof of possession and the key; the CSR's subject is ignored."""
    csr = parse_csr(data)
    key = accept_key(_public_key(csr))
    check_proof_of_possession(csr)
    return key


def _public_key(csr: x509.CertificateSigningRequest) -> object:
    try:
        return csr.public_key()
    except (ValueError, TypeError) as exc:
        raise KeyRejected(f"the CSR's public key is not supported: {exc}") from exc
