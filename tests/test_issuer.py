"""Issuance order: lint before signing, nothing unrecorded, unique serials."""

from __future__ import annotations

import dataclasses
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca import audit
from ca.issuer import CertificateOrder, LintFailed, SigningFailed, issue
from ca.models import Certificate
from ca.store import Store, upgrade
from hsm.api import KeyAlgorithm
from hsm.keys import private_key
from tests.cafixtures import _copy_ca_rows


@pytest.fixture
def fresh(services, tmp_path):
    url = f"sqlite:///{tmp_path / 'issuer.db'}"
    upgrade(url)
    store = Store(url)
    _copy_ca_rows(services.store, store)
    yield store
    store.dispose(close=True)


def _order(services, cn: str = "test subject") -> CertificateOrder:
    key = ec.generate_private_key(ec.SECP256R1())
    return CertificateOrder(services.profiles["ocsp-responder"],
                            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
                            key.public_key())


def test_lint_failure_refuses_and_records(services, fresh):
    authority = services.ca.authority()
    bad_profile = dataclasses.replace(services.profiles["ocsp-responder"],
                                      subject_key_identifier=False,
                                      basic_constraints_critical=True, ca=True,
                                      path_length=None,
                                      key_usages=("digital_signature",))
    order = dataclasses.replace(_order(services), profile=bad_profile)
    with pytest.raises(LintFailed) as info:
        issue(fresh, authority, order, actor="test")
    assert info.value.findings
    with fresh.session() as s:
        rows = s.scalars(select(Certificate).where(Certificate.kind == "ocsp",
                                                   Certificate.der.is_(None))).all()
        assert [r.status for r in rows] == ["failed"]
        assert rows[0].der is None
        actions = [e.action for e in audit.entries(s, limit=100)]
        assert "certificate.lint_failed" in actions
        assert "certificate.signing" not in actions


def test_hsm_failure_leaves_a_failed_record_not_a_certificate(services, fresh, keys):
    ref = keys.generate(KeyAlgorithm.ECDSA_P256, "doomed-issuer")
    authority = dataclasses.replace(services.ca.authority(), key=private_key(keys, ref))
    keys.destroy(ref)
    with pytest.raises(SigningFailed):
        issue(fresh, authority, _order(services), actor="test")
    with fresh.session() as s:
        row = s.scalars(select(Certificate).where(Certificate.kind == "ocsp",
                                                  Certificate.tbs_der.is_not(None),
                                                  Certificate.der.is_(None))).one()
        assert row.status == "failed"
        actions = [e.action for e in audit.entries(s, limit=100)]
    assert actions[-2:] == ["certificate.signing", "certificate.signing_failed"]


def test_issued_certificate_matches_linted_tbs(services, fresh):
    cert = issue(fresh, services.ca.authority(), _order(services), actor="test")
    with fresh.session() as s:
        row = s.scalars(select(Certificate).where(
            Certificate.serial == format(cert.serial_number, "x"))).one()
    assert row.status == "issued" and row.tbs_der == cert.tbs_certificate_bytes
    cert.verify_directly_issued_by(services.ca.authority().certificate)


def test_ten_thousand_serials_are_unique(services, fresh):
    """10,000 certificates issued through the real path (lint skipped for time)."""
    authority = services.ca.authority()
    order = _order(services)
    started = time.monotonic()
    serials = {issue(fresh, authority, order, actor="bulk", lint_before_signing=False)
               .serial_number for _ in range(10_000)}
    assert len(serials) == 10_000
    assert all(0 < s < 2**128 for s in serials)
    with fresh.session() as s:
        count = s.scalar(select(func.count(func.distinct(Certificate.serial))).where(
            Certificate.status == "issued", Certificate.subject == "CN=test subject"))
    assert count == 10_000
    print(f"10,000 issued in {time.monotonic() - started:.1f} s")


def test_loopback_exemption_is_narrow(services):
    authority = services.ca.authority()
    assert authority.lint_exemptions == ("etsi.internal_domain_name",)
    public = dataclasses.replace(authority, base_url="https://pki.kakuin-edu.jp")
    assert public.lint_exemptions == ()
    assert dataclasses.replace(authority, base_url="http://localhost:8080").lint_exemptions


def test_etsi_lint_blocks_an_eseal_without_organization(services, fresh):
    """The e-seal profile is linted as an ETSI legal person before anything is signed."""
    order = CertificateOrder(services.profiles["eseal"],
                             x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "誰か")]),
                             ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(LintFailed) as info:
        issue(fresh, services.ca.authority(), order, actor="test")
    assert any(f.code.startswith(("etsi.", "cabf.", "pkix.")) for f in info.value.findings)
    with fresh.session() as s:
        assert s.scalar(select(func.count()).select_from(Certificate).where(
            Certificate.kind == "eseal", Certificate.der.is_not(None))) == 0
