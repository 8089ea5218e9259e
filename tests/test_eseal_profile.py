"""E-seal certificates (config/profiles/eseal.toml + ca/eseal.py), issued through the real
issuer and HSM, then judged by tools we did not write: pkilint's ETSI and chain linters and
openssl. An e-seal is only useful if any verifier, anywhere, accepts it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from asn1crypto import core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ca import lint
from ca.authorities import issuing_authority
from ca.eseal import (
    EsealError,
    corporate_number_identifier,
    eseal_extensions,
    eseal_subject,
    school_code_identifier,
)
from ca.issuer import (
    CertificateOrder,
    IssuingAuthority,
    build,
    find_issued,
    hash_for,
    issue,
    random_serial,
    throwaway_key,
)
from ca.profiles import ProfileError
from ca.store import Store, upgrade
from tests.dbutil import sqlite_url

# The ETSI lint refuses AIA/CDP URLs on internal names (etsi.internal_domain_name), so these
# certificates name a public host, not the test server's 127.0.0.1.
BASE_URL = "http://pki.example.com"
NTR = corporate_number_identifier("8000020130001")  # 東京都's 法人番号
SC = school_code_identifier("B113210000010")
QC_STATEMENTS = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.3")
BIN = Path(sys.executable).parent
SCHOOL = "千代田区立麹町小学校"


# A minimal, independent RFC 3739 / EN 319 412-5 decoder (not ca.eseal's) for the assertions.
class _Oids(core.SequenceOf):
    _child_spec = core.ObjectIdentifier


class _Strings(core.SequenceOf):
    _child_spec = core.PrintableString


class _GeneralNames(core.SequenceOf):
    _child_spec = asn1_x509.GeneralName


class _Semantics(core.Sequence):
    _fields: ClassVar = [
        ("id", core.ObjectIdentifier, {"optional": True}),
        ("authorities", _GeneralNames, {"optional": True}),
    ]


class _Statement(core.Sequence):
    _fields: ClassVar = [("id", core.ObjectIdentifier), ("info", core.Any, {"optional": True})]


class _Statements(core.SequenceOf):
    _child_spec = _Statement


def qc_statements(cert: x509.Certificate) -> dict[str, object]:
    ext = cert.extensions.get_extension_for_oid(QC_STATEMENTS)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    out: dict[str, object] = {}
    for statement in _Statements.load(ext.value.value):
        oid, info = statement["id"].dotted, statement["info"]
        if oid == "0.4.0.1862.1.6":
            out[oid] = info.parse(_Oids).native
        elif oid == "0.4.0.1862.1.7":
            out[oid] = info.parse(_Strings).native
        elif oid == "1.3.6.1.5.5.7.11.2":
            sem = info.parse(_Semantics)
            out[oid] = (sem["id"].dotted, sem["authorities"].native)
        else:
            assert isinstance(info, core.Void), oid
            out[oid] = None
    return out


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def eseal_store(tmp_path_factory):
    """A store of their own for the e-seal rows: they have no HSM key, and other tests
    check that every certificate in the session store (the ceremony's) has one."""
    url = sqlite_url(tmp_path_factory.mktemp("eseal-db"))
    upgrade(url)
    s = Store(url)
    yield s
    s.dispose(close=True)


@pytest.fixture(scope="module")
def authority(services):
    return issuing_authority(
        services.store, services.keys, services.settings.ca.issuing_name, BASE_URL
    )


def new_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(65537, 2048)


@pytest.mark.parametrize("key_kind", ["ec", "rsa"])
@pytest.mark.parametrize(("org_id", "authorities"), [(NTR, []), (SC, ["mext"])])
def test_eseal_issued_clean(
    services, eseal_store, home, authority, tmp_path, key_kind, org_id, authorities
):
    profile = services.profiles["eseal"]
    subject = eseal_subject(name_ja="東京都立千代田高等学校", organization_identifier=org_id)
    cert = issue(
        eseal_store,
        authority,
        CertificateOrder(
            profile=profile,
            subject=subject,
            public_key=new_key(key_kind).public_key(),
            extensions=eseal_extensions(profile, organization_identifier=org_id),
        ),
        actor="test",
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    assert not lint.blocking(lint.lint_for_profile(der, "eseal"))
    row = find_issued(eseal_store, authority.name, cert.serial_number)
    assert row is not None and row.status == "issued" and row.kind == "eseal" and row.der == der

    leaf = tmp_path / "eseal.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki = home / "pki"
    legal_person = "NCP-LEGAL-PERSON-CERTIFICATE"
    etsi = run(BIN / "lint_etsi_cert", "lint", "-s", "ERROR", "-t", legal_person, leaf)
    assert etsi.returncode == 0 and not etsi.stdout.strip(), etsi.stdout + etsi.stderr
    detected = run(BIN / "lint_etsi_cert", "lint", "-d", "-o", "-s", "ERROR", leaf)
    assert detected.stderr.strip() == legal_person, detected.stderr
    chain = run(
        BIN / "lint_pkix_signer_signee_cert_chain", "lint", "-s", "ERROR",
        pki / "kakuin-issuing-ca.pem", leaf,
    )  # fmt: skip
    assert chain.returncode == 0 and not chain.stdout.strip(), chain.stdout + chain.stderr
    verify = run(
        "openssl", "verify", "-x509_strict", "-CAfile", pki / "kakuin-root-ca.pem",
        "-untrusted", pki / "kakuin-issuing-ca.pem", leaf,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Subject: C (PrintableString), O (UTF8String, Japanese), organizationIdentifier, CN.
    assert [a.oid for a in cert.subject] == [
        NameOID.COUNTRY_NAME,
        NameOID.ORGANIZATION_NAME,
        NameOID.ORGANIZATION_IDENTIFIER,
        NameOID.COMMON_NAME,
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value == org_id
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "東京都立千代田高等学校"
    )

    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.content_commitment and not ku.value.digital_signature
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    # No EKU: the one choice NSS (pdfsig), Adobe and pyHanko all accept (see eseal.toml).
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == list(
        profile.certificate_policies
    )
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(d.access_method, d.access_location.value) for d in aia} == {
        (AuthorityInformationAccessOID.CA_ISSUERS, f"{BASE_URL}/pki/kakuin-issuing-ca.crt"),
        (AuthorityInformationAccessOID.OCSP, f"{BASE_URL}/ocsp"),
    }
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for dp in cdp for n in dp.full_name or ()] == [
        f"{BASE_URL}/pki/kakuin-issuing-ca.crl"
    ]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    expected_authorities = {
        "mext": ["https://www.mext.go.jp/b_menu/toukei/mext_01087.html"],
    }
    assert qc_statements(cert) == {
        "0.4.0.1862.1.6": ["0.4.0.1862.1.6.2"],  # QcType: id-etsi-qct-eseal
        "1.3.6.1.5.5.7.11.2": (  # pkixQCSyntax-v2, id-etsi-qcs-semanticsId-Legal
            "0.4.0.194121.1.2",
            [u for a in authorities for u in expected_authorities[a]] or None,
        ),
    }
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=730)


def test_declared_accreditation_adds_compliance_and_legislation(services):
    profile = services.profiles["eseal"]
    extra = {**profile.extra, "eseal": {**profile.extra["eseal"]}}
    extra["eseal"]["accreditation"] = {"declared": True, "legislation": ["JP"]}
    accredited = dataclasses.replace(profile, extra=extra)
    cert = _throwaway_signed(accredited, NTR)
    assert qc_statements(cert) == {
        "0.4.0.1862.1.1": None,  # QcCompliance
        "0.4.0.1862.1.7": ["JP"],  # QcCClegislation: not an EU (eIDAS) qualified claim
        "0.4.0.1862.1.6": ["0.4.0.1862.1.6.2"],
        "1.3.6.1.5.5.7.11.2": ("0.4.0.194121.1.2", None),
    }
    der = cert.public_bytes(serialization.Encoding.DER)
    assert not lint.blocking(lint.lint_for_profile(der, "eseal"))

    extra["eseal"]["accreditation"] = {"declared": True, "legislation": []}
    with pytest.raises(ProfileError, match="legislation"):
        eseal_extensions(dataclasses.replace(profile, extra=extra), organization_identifier=NTR)


def _throwaway_signed(
    profile, org_id: str | None, subject: x509.Name | None = None, base_url: str = BASE_URL
) -> x509.Certificate:
    """Built like issuer.issue builds it, signed by a throwaway key as pre-issuance lint is."""
    ca_key = ec.generate_private_key(ec.SECP384R1())
    authority = IssuingAuthority("kakuin-issuing-ca", ca_key, None, base_url, subject=_ca_name())
    order = CertificateOrder(
        profile=profile,
        subject=subject or eseal_subject(name_ja=SCHOOL, organization_identifier=org_id),
        public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
        extensions=eseal_extensions(profile, organization_identifier=org_id),
    )
    builder = build(authority, order, random_serial(), datetime.now(UTC).replace(microsecond=0))
    return builder.sign(throwaway_key(ca_key), hash_for(ca_key))


def _ca_name() -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kakuin 教育トラスト基盤"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kakuin Issuing CA 1"),
        ]
    )


def _codes(findings: list[lint.Finding]) -> set[str]:
    return {f.code for f in lint.blocking(findings)}


def test_lint_refuses_eseal_without_organization_name(services):
    profile = services.profiles["eseal"]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, NTR),
            x509.NameAttribute(NameOID.COMMON_NAME, SCHOOL),
        ]
    )
    der = _throwaway_signed(profile, NTR, subject).public_bytes(serialization.Encoding.DER)
    codes = _codes(lint.lint_for_profile(der, "eseal"))
    assert any(c.startswith("etsi.en_319_412_3.leg-4.2.1-2") for c in codes), codes
    # RFC 5280 alone would have let it through: the e-seal kind needs the ETSI lint.
    assert not lint.blocking(lint.lint_pkix(der))


def test_lint_refuses_eseal_without_organization_identifier(services):
    der = _throwaway_signed(services.profiles["eseal"], None).public_bytes(
        serialization.Encoding.DER
    )
    codes = _codes(lint.lint_etsi_legal_person(der))
    assert any(c.startswith("etsi.en_319_412_3.leg-4.2.1-2") for c in codes), codes


def test_lint_refuses_eseal_pointing_at_loopback(services):
    der = _throwaway_signed(
        services.profiles["eseal"], NTR, base_url="http://127.0.0.1:8080"
    ).public_bytes(serialization.Encoding.DER)
    assert "etsi.internal_domain_name" in _codes(lint.lint_for_profile(der, "eseal"))


def test_lint_for_profile_uses_rfc5280_lints_for_ca_certificates(home):
    der = (home / "pki" / "kakuin-issuing-ca.crt").read_bytes()
    assert lint.lint_for_profile(der, "issuing") == lint.lint_pkix(der)
    assert not lint.blocking(lint.lint_for_profile(der, "issuing"))


def test_identifiers():
    assert corporate_number_identifier("7000012050002") == "NTRJP-7000012050002"  # 国税庁
    with pytest.raises(EsealError, match="check digit"):
        corporate_number_identifier("8000020130002")
    with pytest.raises(EsealError):
        corporate_number_identifier("800002013000")
    assert school_code_identifier("F112310102342") == "SC:JP-F112310102342"
    with pytest.raises(EsealError):
        school_code_identifier("b11321000001")


def test_subject_names_and_encodings():
    name = eseal_subject(
        name_ja=SCHOOL,
        organization_identifier=SC,
        name_en="Kojimachi Elementary School",
    )
    attrs = {a.oid: a for a in name}
    assert attrs[NameOID.COMMON_NAME].value == "Kojimachi Elementary School"
    assert attrs[NameOID.ORGANIZATION_NAME].value == SCHOOL
    der = name.public_bytes()
    # PrintableString (0x13) for C and organizationIdentifier, UTF8String (0x0c) for O and CN.
    assert b"\x13\x02JP" in der and b"\x13\x13" + SC.encode() in der
    assert b"\x0c" + bytes([len(SCHOOL.encode())]) in der


def test_national_scheme_needs_registration_authority(services):
    profile = services.profiles["eseal"]
    extra = {**profile.extra, "eseal": {**profile.extra["eseal"], "registration_authorities": {}}}
    with pytest.raises(EsealError, match=r"LEG-5\.1\.4-05"):
        eseal_extensions(dataclasses.replace(profile, extra=extra), organization_identifier=SC)
