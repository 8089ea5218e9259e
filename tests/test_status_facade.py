"""ca.status: what the signing side may see of the CA."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.x509 import ocsp

from ca import status


def test_tsa_credential_chains_to_the_root(services):
    cred = status.tsa_credential(services.store)
    certs = [x509.load_der_x509_certificate(d) for d in cred.chain]
    assert certs[0].serial_number == int(cred.serial, 16)
    for child, parent in itertools.pairwise(certs):
        child.verify_directly_issued_by(parent)
    assert certs[-1].subject == certs[-1].issuer
    assert services.keys.find(key_id=cred.key_id).label.endswith("-tsa")


def test_ocsp_response_for_embedding(services):
    cred = status.tsa_credential(services.store)
    der = status.ocsp_response_der(services.store, services.keys, cred.issuer_name,
                                   cred.certificate, cred.chain[1])
    resp = ocsp.load_der_ocsp_response(der)
    assert resp.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert all(r.certificate_status == ocsp.OCSPCertStatus.GOOD for r in resp.responses)


def test_tsa_serials_are_unique(services):
    now = datetime.now(UTC)
    status.record_tsa_serial(services.store, 123456789, imprint_hex="00" * 32,
                             hash_algorithm="sha256", policy_oid="1.2.3", issued_at=now)
    with pytest.raises(status.Conflict):
        status.record_tsa_serial(services.store, 123456789, imprint_hex="11" * 32,
                                 hash_algorithm="sha256", policy_oid="1.2.3", issued_at=now)


def test_no_seal_credential_is_a_clear_404(services):
    with pytest.raises(status.NotFound, match="no valid hosted e-seal"):
        status.seal_credential(services.store, 999999)


def test_crl_and_chain(services, settings):
    assert status.crl_der(services.store, settings.ca.issuing_name)
    chain = status.ca_chain(services.store)
    assert len(chain) == 2


def test_single_use_tokens(services):
    from datetime import timedelta

    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert status.consume_token(services.store, "sad-abc", purpose="csc-sad", expires_at=expires)
    assert not status.consume_token(services.store, "sad-abc", purpose="csc-sad",
                                    expires_at=expires)


def test_trust_list_signer_is_issued_once_and_lints_clean(services, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    cred = status.trust_list_credential(services.store)  # issued by `kakuin init`
    assert services.ca.ensure_trust_list_signer() is False
    cert = x509.load_der_x509_certificate(cred.certificate)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert [o.dotted_string for o in eku] == ["0.4.0.2231.3.0"]
    pem = tmp_path / "tsl.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run([str(Path(sys.executable).parent / "lint_pkix_cert"), "lint", "-s",
                          "WARNING", str(pem)], capture_output=True, text=True, check=False)
    assert "ERROR" not in out.stdout and "FATAL" not in out.stdout, out.stdout
