"""The whole issuance path over real HTTP with real tokens, on SQLite and PostgreSQL.

Board officer registers a school, the school system requests a seal (CSR and hosted key),
the wrong people are refused (403, audited), the right officer approves, and the certificate
is checked with openssl and pkilint.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from ca import audit, clients, registry
from ca.models import Certificate, SealRequest
from ca.store import Store
from kakuin.services import Services
from tests.cafixtures import Env, _call, _copy_ca_rows, _csr  # noqa: F401

TOOLS = Path(sys.executable).parent


def _count(store: Store, model: Any) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _errors(report: str) -> list[str]:
    """ERROR/FATAL lines of a pkilint report, except the one finding loopback test URLs cause.

    The session CA publishes AIA/CDP/OCSP at http://127.0.0.1:PORT (verifiers in tests fetch
    them over real HTTP); ETSI rightly calls that an internal domain name. A CA with a public
    base URL gets no exception: see tests/test_eseal_profile.py.
    """
    return [line for line in report.splitlines()
            if ("ERROR" in line or "FATAL" in line) and "etsi.internal_domain_name" not in line]


def _check_with_tools(env: Env, pem: str, tmp_path: Path) -> None:
    cert_path = tmp_path / "seal.pem"
    cert_path.write_text(pem)
    pki = env.home / "pki"
    out = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile",
                          pki / "kakuin-root-ca.pem", "-untrusted", pki / "kakuin-issuing-ca.pem",
                          cert_path], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([TOOLS / "lint_etsi_cert", "lint", "-t", "NCP-LEGAL-PERSON-CERTIFICATE",
                          cert_path], capture_output=True, text=True, check=False)
    assert not _errors(out.stdout), out.stdout
    out = subprocess.run([TOOLS / "lint_pkix_signer_signee_cert_chain", "lint",
                          pki / "kakuin-issuing-ca.pem", cert_path],
                         capture_output=True, text=True, check=False)
    assert not _errors(out.stdout), out.stdout + out.stderr


def test_csr_request_approved_by_the_right_board_only(env: Env, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # The CSR claims to be another school: the certificate must still name ours.
    status, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                        {"csr": _csr(key, "偽の学校", "札幌市立偽小学校")})
    assert status == 201, req
    assert req["status"] == "pending" and req["key"]["hosted"] is False
    rid = req["id"]

    for token in (env.officer_b, env.school):
        status, problem = _call(env.url, "POST", f"/api/v1/seal-requests/{rid}/approve", token)
        assert status == 403, problem
        assert problem["type"] == "urn:kakuin:problem:ca/forbidden"
    status, req = _call(env.url, "GET", f"/api/v1/seal-requests/{rid}", env.officer_b)
    assert status == 403

    status, req = _call(env.url, "POST", f"/api/v1/seal-requests/{rid}/approve", env.officer_a)
    assert status == 200, req
    assert req["status"] == "issued"
    pem = req["certificate"]["pem"]
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert org == "新宿区立第一中学校"
    org_id = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)[0].value
    assert org_id == "SC:JP-C113210000010"
    assert "偽" not in cert.subject.rfc4514_string()
    _check_with_tools(env, pem, tmp_path)

    with env.store.session() as s:
        actions = [(e.action, e.actor) for e in audit.entries(s, limit=1000)]
        assert audit.verify(s).ok
    assert sum(1 for a, _ in actions if a == "access.denied") >= 3
    assert any(a == "seal-request.approved" and "shinjuku-officer" in actor
               for a, actor in actions)
    assert any(a == "certificate.issued" for a, _ in actions)

    # Already decided: a second approval is a conflict, not a second certificate.
    status, problem = _call(env.url, "POST", f"/api/v1/seal-requests/{rid}/approve",
                            env.officer_a)
    assert status == 409

    serial = req["certificate"]["serial"]
    status, der = _call(env.url, "GET", f"/api/v1/certificates/{serial}", None,
                        headers={"Accept": "application/pkix-cert"})
    assert status == 200 and x509.load_der_x509_certificate(der) == cert
    status, body = _call(env.url, "GET", f"/api/v1/certificates/{serial}", None,
                         headers={"Accept": "application/x-pem-file"})
    assert status == 200 and body.decode() == pem
    status, body = _call(env.url, "GET", f"/api/v1/organizations/{env.school_id}/certificates",
                         env.school)
    assert status == 200 and serial in [c["serial"] for c in body["certificates"]]

    # The same key cannot be certified to another organization.
    with env.store.session() as s:
        other = registry.add_school(s, name_ja="新宿区立第二中学校", school_code="C113210000020",
                                    board_id=env.board_a, actor="test")
        _, other_token = clients.create_client(s, organization_id=other.id,
                                               role="school-system", name="x", actor="test")
    status, problem = _call(env.url, "POST", "/api/v1/seal-requests", other_token,
                            {"csr": _csr(key)})
    assert status == 409 and problem["type"] == "urn:kakuin:problem:ca/key-in-use"


def test_hosted_key_request(env: Env, tmp_path: Path) -> None:
    status, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                        {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    assert status == 201, req
    assert req["key"]["hosted"] is True
    status, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                        env.officer_a)
    assert status == 200, req
    pem = req["certificate"]["pem"]
    cert = x509.load_pem_x509_certificate(pem.encode())
    with env.store.session() as s:
        row = s.get(SealRequest, req["id"])
        assert row is not None and row.hosted_key_id
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() == req["key"]["public_key_sha256"]
    _check_with_tools(env, pem, tmp_path)


def test_rejection_destroys_the_hosted_key(env: Env, services: Services) -> None:
    status, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                        {"key": {"hosted": True}})
    assert status == 201
    with env.store.session() as s:
        row = s.get(SealRequest, req["id"])
        assert row is not None and row.hosted_key_id
        key_id = bytes.fromhex(row.hosted_key_id)
    services.keys.find(key_id=key_id)
    status, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/reject",
                        env.officer_a, {"reason": "duplicate"})
    assert status == 200 and req["status"] == "rejected" and req["reason"] == "duplicate"
    from hsm.errors import HsmKeyNotFound

    with pytest.raises(HsmKeyNotFound):
        services.keys.find(key_id=key_id)


def _bad_signature_csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(base64.b64decode("".join(_csr(key).splitlines()[1:-1])))
    der[-5] ^= 0x01  # inside the signature value
    return base64.b64encode(bytes(der)).decode()


@pytest.mark.parametrize(("name", "csr", "status", "type_"), [
    ("bad signature", _bad_signature_csr, 422, "ca/csr-signature-invalid"),
    ("RSA-1024", lambda: _csr(rsa.generate_private_key(65537, 1024)), 422, "ca/key-rejected"),
    ("Ed448", lambda: _csr(ed448.Ed448PrivateKey.generate()), 422, "ca/key-rejected"),
    ("P-521", lambda: _csr(ec.generate_private_key(ec.SECP521R1())), 422, "ca/key-rejected"),
    ("garbage DER", lambda: base64.b64encode(b"\x30\x03garbage").decode(), 400,
     "ca/malformed-csr"),
    ("not base64", lambda: "@@@", 422, "ca/invalid-request"),
    ("oversized", lambda: base64.b64encode(b"\x30" * 20000).decode(), 400, "ca/malformed-csr"),
])
def test_bad_csrs_are_refused_and_leave_nothing(env: Env, name, csr, status, type_) -> None:
    before = (_count(env.store, SealRequest), _count(env.store, Certificate))
    got, problem = _call(env.url, "POST", "/api/v1/seal-requests", env.school, {"csr": csr()})
    assert got == status, (name, problem)
    assert problem["type"] == f"urn:kakuin:problem:{type_}"
    assert problem["detail"]
    assert (_count(env.store, SealRequest), _count(env.store, Certificate)) == before


@pytest.mark.parametrize(("body", "status"), [
    ("not json", 400),
    ([1, 2], 400),
    ({}, 422),
    ({"csr": 5}, 422),
    ({"key": {"hosted": False}}, 422),
    ({"key": {"hosted": True, "algorithm": "DSA-1024"}}, 422),
    ({"key": {"hosted": True}, "csr": "x"}, 422),
    ({"key": {"hosted": True}, "profile": "root-ca"}, 422),
])
def test_malformed_requests_are_problem_json(env: Env, body, status) -> None:
    before = _count(env.store, SealRequest)
    if isinstance(body, str):
        req = urllib.request.Request(env.url + "/api/v1/seal-requests", data=body.encode(),
                                     method="POST", headers={
                                         "Authorization": f"Bearer {env.school}",
                                         "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == status
        assert info.value.headers["Content-Type"] == "application/problem+json"
    else:
        got, problem = _call(env.url, "POST", "/api/v1/seal-requests", env.school, body)
        assert got == status, problem
    assert _count(env.store, SealRequest) == before


def test_authentication_is_required(env: Env) -> None:
    status, problem = _call(env.url, "POST", "/api/v1/seal-requests", None, {"key": {}})
    assert status == 401 and problem["type"] == "urn:kakuin:problem:auth/unauthenticated"
    status, problem = _call(env.url, "POST", "/api/v1/seal-requests", "kkn_forged", {"key": {}})
    assert status == 401


def test_school_system_cannot_request_for_another_school(env: Env) -> None:
    with env.store.session() as s:
        other = registry.add_school(s, name_ja="新宿区立第三中学校", school_code="C113210000030",
                                    board_id=env.board_a, actor="test")
    status, _ = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                            {"organization_id": other.id, "key": {"hosted": True}})
    assert status == 403
    status, _problem = _call(env.url, "POST", "/api/v1/organizations", env.officer_b, {
        "kind": "school", "name_ja": "x", "school_code": "C113210000040", "board_id": env.board_a})
    assert status == 403


def test_renewal_names_the_replaced_certificate(env: Env) -> None:
    status, req = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                        {"key": {"hosted": True}})
    status, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                        env.officer_a)
    serial = req["certificate"]["serial"]
    status, renewal = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                            {"key": {"hosted": True}, "replaces_serial": serial})
    assert status == 201 and renewal["replaces_serial"] == serial
    status, _problem = _call(env.url, "POST", "/api/v1/seal-requests", env.school,
                            {"key": {"hosted": True}, "replaces_serial": "abcdef"})
    assert status == 422


def test_openapi_document(env: Env) -> None:
    status, doc = _call(env.url, "GET", "/api/v1/openapi.json", None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    for path in ("/api/v1/seal-requests", "/api/v1/seal-requests/{id}/approve",
                 "/api/v1/certificates/{serial}", "/api/v1/organizations/{id}/certificates"):
        assert path in doc["paths"]
