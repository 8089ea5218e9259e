"""Key ceremony (`kakuin init`) checked with openssl and pkilint, tools we did not write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID
from sqlalchemy import select

from ca import audit
from ca.models import Certificate
from kakuin.cli import main


def _load(home, name):
    return x509.load_der_x509_certificate((home / "pki" / f"{name}.crt").read_bytes())


def test_chain_verifies_with_openssl(home):
    pki = home / "pki"
    for leaf in ("kakuin-issuing-ca", "kakuin-issuing-ca-ocsp", "kakuin-issuing-ca-tsa"):
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-CAfile",
                pki / "kakuin-root-ca.pem",
                "-untrusted",
                pki / "kakuin-issuing-ca.pem",
                pki / f"{leaf}.pem",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_tsa_certificate_verifies_for_timestamping_purpose(home):
    pki = home / "pki"
    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "timestampsign",
            "-CAfile",
            pki / "kakuin-root-ca.pem",
            "-untrusted",
            pki / "kakuin-issuing-ca.pem",
            pki / "kakuin-issuing-ca-tsa.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "name",
    ["kakuin-root-ca", "kakuin-issuing-ca", "kakuin-issuing-ca-ocsp", "kakuin-issuing-ca-tsa"],
)
def test_certificates_are_pkilint_clean(home, name):
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "lint_pkix_cert"),
            "lint",
            "-s",
            "WARNING",
            str(home / "pki" / f"{name}.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ERROR" not in out.stdout and "FATAL" not in out.stdout


def test_profiles_shape_the_certificates(home, settings):
    root = _load(home, "kakuin-root-ca")
    issuing = _load(home, "kakuin-issuing-ca")
    ocsp = _load(home, "kakuin-issuing-ca-ocsp")
    tsa = _load(home, "kakuin-issuing-ca-tsa")
    assert root.subject == root.issuer
    assert root.public_key().curve.name == "secp384r1"
    assert issuing.public_key().curve.name == "secp256r1"
    bc = issuing.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ocsp.extensions.get_extension_for_class(x509.OCSPNoCheck)
    eku = ocsp.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.OCSP_SIGNING]
    eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    aia = tsa.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    urls = {d.access_location.value for d in aia.value}
    assert urls == {f"{settings.base_url}/pki/kakuin-issuing-ca.crt", f"{settings.base_url}/ocsp"}
    org = issuing.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0]
    assert org.value == settings.ca.organization
    for cert in (root, issuing, ocsp, tsa):
        assert 64 <= cert.serial_number.bit_length() <= 128


def test_ceremony_is_recorded_in_store_and_audit(services):
    with services.store.session() as s:
        rows = s.scalars(select(Certificate).where(Certificate.status == "issued")).all()
        kinds = sorted(r.kind for r in rows if r.kind in ("root", "issuing", "ocsp", "tsa"))
        assert kinds == ["issuing", "ocsp", "root", "tsa"]
        for row in rows:
            assert row.der and row.tbs_der and row.hsm_key_id
            assert x509.load_der_x509_certificate(row.der).tbs_certificate_bytes == row.tbs_der
        result = audit.verify(s)
        assert result.ok, result.problems
        actions = [e.action for e in audit.entries(s, limit=1000)]
    assert actions.count("certificate.issued") >= 4
    assert "ceremony.completed" in actions


def test_ca_keys_are_in_the_hsm_and_match(services, home):
    for name in (
        "kakuin-root-ca",
        "kakuin-issuing-ca",
        "kakuin-issuing-ca-ocsp",
        "kakuin-issuing-ca-tsa",
    ):
        ref = services.keys.find(label=name)
        cert = _load(home, name)
        assert (
            cert.public_key().public_bytes(
                encoding=serialization.Encoding.DER,
                format=serialization.PublicFormat.SubjectPublicKeyInfo,
            )
            == ref.public_key_der
        )
        assert services.keys.private_key_attributes(ref)["extractable"] is False


def test_second_run_refuses_and_changes_nothing(home):
    before = sorted((p.name, p.read_bytes()) for p in (home / "pki").iterdir())
    result = CliRunner().invoke(main, ["--home", str(home), "init"])
    assert result.exit_code == 1
    assert "refusing to run the key ceremony again" in result.output
    after = sorted((p.name, p.read_bytes()) for p in (home / "pki").iterdir())
    assert before == after


def test_no_pin_in_settings_file(tmp_path):
    from kakuin.settings import SettingsError, load_settings

    (tmp_path / "kakuin.toml").write_text('[hsm]\npin = "1234"\n')
    with pytest.raises(SettingsError, match="must not be in a settings file"):
        load_settings(tmp_path)
