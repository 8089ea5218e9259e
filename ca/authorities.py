"""Load the CAs this instance runs (certificate from the store, key from the HSM)."""

from __future__ import annotations

from cryptography import x509
from sqlalchemy import select

from ca.errors import NotFound
from ca.issuer import IssuingAuthority
from ca.models import Certificate
from ca.store import Store
from hsm.api import KeyManager
from hsm.keys import HsmPrivateKey, private_key


def load_certificate(store: Store, kind: str, name: str | None = None) -> Certificate:
    """The newest issued certificate of ``kind`` (root|issuing|ocsp|tsa) whose HSM key we hold.

    ``name`` narrows by the issuer name recorded for it (e.g. the root for the issuing CA).
    """
    with store.session() as s:
        query = select(Certificate).where(
            Certificate.kind == kind,
            Certificate.status == "issued",
            Certificate.hsm_key_id.is_not(None),
        )
        if name is not None:
            query = query.where(Certificate.issuer_name == name)
        row = s.scalars(
            query.order_by(Certificate.not_before.desc(), Certificate.id.desc())
        ).first()
    if row is None or row.der is None:
        raise NotFound(f"no issued {kind} certificate; run `kakuin init`")
    return row


def load_key(keys: KeyManager, row: Certificate) -> HsmPrivateKey:
    assert row.hsm_key_id is not None
    return private_key(keys, keys.find(key_id=bytes.fromhex(row.hsm_key_id)))


def issuing_authority(store: Store, keys: KeyManager, name: str, base_url: str) -> IssuingAuthority:
    """The issuing CA called ``name`` (the name used in its AIA/CDP URLs)."""
    row = load_certificate(store, "issuing")
    cert = x509.load_der_x509_certificate(row.der or b"")
    return IssuingAuthority(name, load_key(keys, row), cert, base_url)


def root_certificate(store: Store) -> x509.Certificate:
    row = load_certificate(store, "root")
    return x509.load_der_x509_certificate(row.der or b"")
