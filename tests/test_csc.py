"""CSC API (remote signing by hash): pyHanko's CSCSigner end to end over real HTTP, SAD
binding (hashes, caller, credential, expiry, single use), organization isolation, v1 and v2
field names, CSC-style errors."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos as asn1_algos
from asn1crypto import keys as asn1_keys
from asn1crypto import tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from sqlalchemy import select
from werkzeug.serving import make_server

from ca import clients, registry
from ca import status as ca_status
from ca.models import AuditEntry
from kakuin.app import create_app
from kakuin.services import Services
from signing import csc_api
from signing.client import RemoteSealError, seal_pdf_remote
from signing.csc import CscService, load_sad_key
from tests.cafixtures import Env, _call

ECDSA_SHA256 = "1.2.840.10045.4.3.2"
SHA256 = "2.16.840.1.101.3.4.2.1"
SHA384 = "2.16.840.1.101.3.4.2.2"
MARKER = b"KAKUIN-PRIVATE-PUPIL-RECORD-7f3a"


class Clock:
    """Real time plus an offset the tests move to age SADs."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Csc:
    url: str
    clock: Clock
    env: Env
    school_a: str
    school_b: str
    cred_a: str
    cred_b: str
    org_b: int
    sad_key: bytes
    bodies: list[bytes] = field(default_factory=list)


class _Recorder:
    """WSGI middleware keeping every request body, to prove no document content arrives."""

    def __init__(self, app: Any, bodies: list[bytes]) -> None:
        self.app, self.bodies = app, bodies

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        self.bodies.append(body)
        environ["wsgi.input"] = BytesIO(body)
        return self.app(environ, start_response)


def _hosted_seal(base: str, school_token: str, officer: str, algorithm: str = "ECDSA-P256") -> str:
    status, req = _call(base, "POST", "/api/v1/seal-requests", school_token,
                        {"key": {"hosted": True, "algorithm": algorithm}})
    assert status == 201, req
    status, req = _call(base, "POST", f"/api/v1/seal-requests/{req['id']}/approve", officer)
    assert status == 200, req
    return str(req["certificate"]["serial"])


@pytest.fixture(scope="module")
def csc(env: Env, settings, services) -> Iterator[Csc]:
    clock, sad_key = Clock(), secrets.token_bytes(32)
    app = create_app(settings, Services(settings, env.store, services.keys, services.profiles))
    csc_api.init_app(app, CscService(env.store, services.keys, sad_key, clock=clock,
                                     max_batch=10))
    bodies: list[bytes] = []
    server = make_server("127.0.0.1", 0, _Recorder(app, bodies), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with env.store.session() as s:
            school_b = registry.add_school(s, name_ja="新宿区立第二中学校",
                                           school_code="C113210000020", board_id=env.board_a,
                                           actor="test")
            org_b = school_b.id
            _, token_b = clients.create_client(s, organization_id=org_b, role="school-system",
                                               name="B system", actor="test")
        serial_a = _hosted_seal(url, env.school, env.officer_a)
        serial_b = _hosted_seal(url, token_b, env.officer_a)
        yield Csc(url, clock, env, env.school, token_b, f"{env.school_id}-{serial_a}",
                  f"{org_b}-{serial_b}", org_b, sad_key, bodies)
    finally:
        server.shutdown()


def _post(base: str, path: str, token: str | None, body: Any = None, *,
          raw: bytes | None = None, method: str = "POST") -> tuple[int, Any, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        assert err.headers["Content-Type"] == "application/json", err.headers["Content-Type"]
        return err.code, json.loads(err.read()), err.headers


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _digests(n: int) -> list[bytes]:
    return [hashlib.sha256(secrets.token_bytes(16)).digest() for _ in range(n)]


def _authorize(c: Csc, token: str, cred: str, digests: list[bytes], version: str = "v1") -> str:
    key = "hash" if version == "v1" else "hashes"
    status, body, _ = _post(c.url, f"/csc/{version}/credentials/authorize", token,
                            {"credentialID": cred, "numSignatures": len(digests),
                             key: [_b64(d) for d in digests]})
    assert status == 200, body
    assert body["expiresIn"] == 300
    return str(body["SAD"])


def _sign(c: Csc, token: str, cred: str, sad: str, digests: list[bytes],
          version: str = "v1") -> tuple[int, Any]:
    key = "hash" if version == "v1" else "hashes"
    status, body, _ = _post(c.url, f"/csc/{version}/signatures/signHash", token,
                            {"credentialID": cred, "SAD": sad, "signAlgo": ECDSA_SHA256,
                             key: [_b64(d) for d in digests]})
    return status, body


def _pdf() -> bytes:
    writer = PdfFileWriter(stream_xrefs=False)
    content = generic.StreamObject(
        stream_data=b"BT /F1 12 Tf 72 720 Td (" + MARKER + b") Tj ET")
    writer.insert_page(PageObject(writer.add_object(content), (0, 0, 595, 842)))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _leaf(c: Csc, token: str, cred: str) -> x509.Certificate:
    status, body, _ = _post(c.url, "/csc/v2/credentials/info", token, {"credentialID": cred})
    assert status == 200, body
    return x509.load_der_x509_certificate(base64.b64decode(body["cert"]["certificates"][0]))


def _audit(c: Csc, action: str) -> list[AuditEntry]:
    with c.env.store.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)).all())


# -- end to end --------------------------------------------------------------------------


def test_pyhanko_csc_signer_end_to_end(csc: Csc) -> None:
    pdf = _pdf()
    assert MARKER in pdf
    csc.bodies.clear()
    sealed = seal_pdf_remote(pdf, base_url=csc.url, token=csc.school_a)

    reader = PdfFileReader(BytesIO(sealed))
    (sig,) = reader.embedded_signatures
    root = asn1_x509.Certificate.load(ca_status.ca_chain(csc.env.store)[-1])
    assert root.self_signed == "maybe" or root.self_signed == "yes"
    vc = ValidationContext(trust_roots=[root], allow_fetching=False)
    result = validate_pdf_signature(sig, vc)
    assert result.intact and result.valid and result.trusted, result.pretty_print_details()
    serial = csc.cred_a.split("-", 1)[1]
    assert format(sig.signer_cert.serial_number, "x") == serial

    # The privacy path: nothing of the document reached kakuin, only hashes.
    assert csc.bodies and not any(MARKER in b for b in csc.bodies)
    assert max(len(b) for b in csc.bodies) < 2000
    entries = [e for e in _audit(csc, "csc.signHash") if e.object_id == serial]
    assert entries and json.loads(entries[-1].details or "{}")["count"] == 1
    assert entries[-1].digest and len(entries[-1].digest) == 64


def test_client_explicit_credential_and_clear_errors(csc: Csc) -> None:
    sealed = seal_pdf_remote(_pdf(), base_url=csc.url + "/", token=csc.school_b,
                             credential_id=csc.cred_b)
    (sig,) = PdfFileReader(BytesIO(sealed)).embedded_signatures
    assert format(sig.signer_cert.serial_number, "x") == csc.cred_b.split("-", 1)[1]
    with pytest.raises(RemoteSealError, match="403"):
        seal_pdf_remote(_pdf(), base_url=csc.url, token=csc.school_b, credential_id=csc.cred_a)
    with pytest.raises(RemoteSealError, match="401"):
        seal_pdf_remote(_pdf(), base_url=csc.url, token="kkn_forged")


@pytest.fixture(scope="module")
def local_tsa() -> Iterator[tuple[str, asn1_x509.Certificate]]:
    """A throwaway RFC 3161 TSA (pyHanko's dummy) behind HTTP, until kakuin's /tsa lands."""
    key = rsa.generate_private_key(65537, 2048)  # pyHanko's dummy TSA signs with RSA only
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test TSA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .sign(key, hashes.SHA256())
    )
    tsa_cert = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
    stamper = DummyTimeStamper(tsa_cert, asn1_keys.PrivateKeyInfo.load(key.private_bytes(
        Encoding.DER, PrivateFormat.PKCS8, NoEncryption())))

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        reply = stamper.request_tsa_response(tsp.TimeStampReq.load(body)).dump()
        start_response("200 OK", [("Content-Type", "application/timestamp-reply")])
        return [reply]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/tsa", tsa_cert
    server.shutdown()


def test_b_t_level(csc: Csc, local_tsa: tuple[str, asn1_x509.Certificate]) -> None:
    tsa_url, tsa_cert = local_tsa
    sealed = seal_pdf_remote(_pdf(), base_url=csc.url, token=csc.school_a, level="B-T",
                             timestamp_url=tsa_url)
    (sig,) = PdfFileReader(BytesIO(sealed)).embedded_signatures
    root = asn1_x509.Certificate.load(ca_status.ca_chain(csc.env.store)[-1])
    result = validate_pdf_signature(
        sig, ValidationContext(trust_roots=[root], allow_fetching=False),
        ts_validation_context=ValidationContext(trust_roots=[tsa_cert], allow_fetching=False))
    assert result.bottom_line, result.pretty_print_details()
    assert result.timestamp_validity is not None and result.timestamp_validity.trusted


def test_b_t_level_defaults_to_kakuin_tsa(csc: Csc) -> None:
    probe = urllib.request.Request(csc.url + "/tsa", data=b"", method="POST")
    try:
        urllib.request.urlopen(probe, timeout=10)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            pytest.skip("no /tsa endpoint registered in the app yet (signing/tsa.py pending)")
    sealed = seal_pdf_remote(_pdf(), base_url=csc.url, token=csc.school_a, level="B-T")
    (sig,) = PdfFileReader(BytesIO(sealed)).embedded_signatures
    unsigned = sig.signer_info["unsigned_attrs"]
    assert "signature_time_stamp_token" in [a["type"].native for a in unsigned]


def test_sad_works_in_any_worker_and_is_spent_once(csc: Csc, settings, services) -> None:
    """Two workers share only the key file and the database, as gunicorn's do."""
    app = create_app(settings, Services(settings, csc.env.store, services.keys,
                                        services.profiles))
    csc_api.init_app(app, CscService(csc.env.store, services.keys, csc.sad_key))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    other = Csc(**{**csc.__dict__, "url": f"http://127.0.0.1:{server.server_port}"})
    try:
        digests = _digests(2)
        sad = _authorize(csc, csc.school_a, csc.cred_a, digests)
        assert _sign(other, csc.school_a, csc.cred_a, sad, digests)[0] == 200
        status, body = _sign(csc, csc.school_a, csc.cred_a, sad, digests)
        assert status == 400 and "already used" in body["error_description"]
    finally:
        server.shutdown()


def test_v2_field_names_and_signature_verifies(csc: Csc) -> None:
    status, listed, _ = _post(csc.url, "/csc/v2/credentials/list", csc.school_a, {})
    assert status == 200 and listed["credentialIDs"] == [csc.cred_a]
    status, info, _ = _post(csc.url, "/csc/v2/credentials/info", csc.school_a,
                            {"credentialID": csc.cred_a, "certificates": "chain",
                             "certInfo": True})
    assert status == 200, info
    assert info["SCAL"] == "2" and info["auth"]["mode"] == "explicit"
    assert info["key"] == {"status": "enabled", "algo": info["key"]["algo"], "len": 256,
                           "curve": "1.2.840.10045.3.1.7"}
    assert ECDSA_SHA256 in info["key"]["algo"]
    assert info["cert"]["status"] == "valid" and len(info["cert"]["certificates"]) == 3
    assert info["cert"]["serialNumber"] == csc.cred_a.split("-", 1)[1]
    assert info["cert"]["validTo"].endswith("Z")
    leaf = x509.load_der_x509_certificate(base64.b64decode(info["cert"]["certificates"][0]))

    digests = _digests(3)
    status, auth, _ = _post(csc.url, "/csc/v2/credentials/authorize", csc.school_a,
                            {"credentialID": csc.cred_a, "numSignatures": 3,
                             "hashes": [_b64(d) for d in digests],
                             "hashAlgorithmOID": SHA256})
    assert status == 200, auth
    status, signed, _ = _post(csc.url, "/csc/v2/signatures/signHash", csc.school_a,
                              {"credentialID": csc.cred_a, "SAD": auth["SAD"],
                               "hashes": [_b64(d) for d in reversed(digests)],
                               "hashAlgorithmOID": SHA256, "signAlgo": ECDSA_SHA256,
                               "operationMode": "S"})
    assert status == 200, signed
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for digest, sig in zip(reversed(digests), signed["signatures"], strict=True):
        public.verify(base64.b64decode(sig), digest, ec.ECDSA(Prehashed(hashes.SHA256())))


def test_v1_field_names_and_info(csc: Csc) -> None:
    status, info, _ = _post(csc.url, "/csc/v1/info", None, {})
    assert status == 200 and info["specs"] == "1.0.4.0" and info["region"] == "JP"
    assert "signatures/signHash" in info["methods"]
    status, info2, _ = _post(csc.url, "/csc/v2/info", None, method="GET")
    assert status == 200 and info2["specs"] == "2.0.0.0"
    status, cinfo, _ = _post(csc.url, "/csc/v1/credentials/info", csc.school_a,
                             {"credentialID": csc.cred_a})
    assert status == 200 and cinfo["authMode"] == "explicit"
    assert len(cinfo["cert"]["certificates"]) == 1  # "single" is the default
    status, cinfo, _ = _post(csc.url, "/csc/v1/credentials/info", csc.school_a,
                             {"credentialID": csc.cred_a, "certificates": "none"})
    assert status == 200 and "certificates" not in cinfo["cert"]
    digests = _digests(2)
    sad = _authorize(csc, csc.school_a, csc.cred_a, digests, "v1")
    status, body, _ = _post(csc.url, "/csc/v1/signatures/signHash", csc.school_a,
                            {"credentialID": csc.cred_a, "SAD": sad, "hashAlgo": SHA256,
                             "signAlgo": "1.2.840.10045.2.1",
                             "hash": [_b64(d) for d in digests]})
    assert status == 200 and len(body["signatures"]) == 2, body


# -- SAD binding -------------------------------------------------------------------------


def test_sad_is_bound_to_the_hashes_and_single_use(csc: Csc) -> None:
    authorized, other = _digests(2), _digests(2)
    sad = _authorize(csc, csc.school_a, csc.cred_a, authorized)
    for wrong in (other, authorized[:1], [*authorized, other[0]], [authorized[0]] * 2):
        status, body = _sign(csc, csc.school_a, csc.cred_a, sad, wrong)
        assert status == 400 and body["error"] == "invalid_request", body
    status, body = _sign(csc, csc.school_a, csc.cred_a, sad, authorized)
    assert status == 200, body
    status, body = _sign(csc, csc.school_a, csc.cred_a, sad, authorized)
    assert status == 400 and "already used" in body["error_description"]


def test_sad_is_bound_to_the_hash_algorithm(csc: Csc) -> None:
    digests = _digests(1)
    status, auth, _ = _post(csc.url, "/csc/v2/credentials/authorize", csc.school_a,
                            {"credentialID": csc.cred_a, "numSignatures": 1,
                             "hashes": [_b64(digests[0])], "hashAlgorithmOID": SHA256})
    assert status == 200
    status, body, _ = _post(csc.url, "/csc/v2/signatures/signHash", csc.school_a,
                            {"credentialID": csc.cred_a, "SAD": auth["SAD"],
                             "hashes": [_b64(digests[0])], "hashAlgorithmOID": SHA384,
                             "signAlgo": "1.2.840.10045.2.1"})
    assert status == 400 and body["error"] == "invalid_request"


def test_sad_of_school_a_is_useless_to_school_b(csc: Csc) -> None:
    digests = _digests(1)
    sad_a = _authorize(csc, csc.school_a, csc.cred_a, digests)
    before = len(_audit(csc, "access.denied"))
    # B's token on A's credential: refused outright, and on record.
    status, body = _sign(csc, csc.school_b, csc.cred_a, sad_a, digests)
    assert status == 403 and body["error"] == "access_denied"
    denied = _audit(csc, "access.denied")
    assert len(denied) == before + 1 and denied[-1].organization_id == csc.env.school_id
    # B's token on B's credential with A's SAD: the SAD names another caller and credential.
    status, body = _sign(csc, csc.school_b, csc.cred_b, sad_a, digests)
    assert status == 400 and body["error_description"] == "Invalid parameter SAD"
    # A's own token on B's credential: refused (403) before the SAD is looked at.
    status, body = _sign(csc, csc.school_a, csc.cred_b, sad_a, digests)
    assert status == 403
    # The SAD stayed unspent through all that: A can still use it.
    status, body = _sign(csc, csc.school_a, csc.cred_a, sad_a, digests)
    assert status == 200, body


def test_sad_for_another_credential_is_refused(csc: Csc) -> None:
    digests = _digests(1)
    sad_b = _authorize(csc, csc.school_b, csc.cred_b, digests)
    # Same hashes, a credential the SAD was not issued for (and a caller it was not issued to).
    status, body = _sign(csc, csc.school_a, csc.cred_a, sad_b, digests)
    assert status == 400 and body["error_description"] == "Invalid parameter SAD"


def test_expired_sad(csc: Csc) -> None:
    digests = _digests(1)
    sad = _authorize(csc, csc.school_a, csc.cred_a, digests)
    csc.clock.offset = timedelta(minutes=5, seconds=1)
    try:
        status, body = _sign(csc, csc.school_a, csc.cred_a, sad, digests)
    finally:
        csc.clock.offset = timedelta(0)
    assert status == 400 and body["error_description"] == "SAD expired"


def test_forged_sad(csc: Csc) -> None:
    digests = _digests(1)
    sad = _authorize(csc, csc.school_a, csc.cred_a, digests)
    flipped = sad[:-6] + ("A" if sad[-6] != "A" else "B") + sad[-5:]
    for bad in (flipped, "x", "A" * 4000):
        status, body = _sign(csc, csc.school_a, csc.cred_a, bad, digests)
        assert status == 400 and body["error_description"] == "Invalid parameter SAD"


# -- organizations -----------------------------------------------------------------------


def test_school_b_cannot_see_or_use_school_a_credential(csc: Csc) -> None:
    status, listed, _ = _post(csc.url, "/csc/v1/credentials/list", csc.school_b, {})
    assert status == 200 and listed["credentialIDs"] == [csc.cred_b]
    status, body, _ = _post(csc.url, "/csc/v1/credentials/info", csc.school_b,
                            {"credentialID": csc.cred_a})
    assert status == 403 and body["error"] == "access_denied"
    status, body, _ = _post(csc.url, "/csc/v1/credentials/authorize", csc.school_b,
                            {"credentialID": csc.cred_a, "numSignatures": 1,
                             "hash": [_b64(_digests(1)[0])]})
    assert status == 403
    status, listed, _ = _post(csc.url, "/csc/v2/credentials/list", csc.env.officer_a,
                              {"credentialInfo": True})
    assert status == 200 and listed["credentialIDs"] == []


def test_revocation_stops_remote_sealing(csc: Csc) -> None:
    with csc.env.store.session() as s:
        school_c = registry.add_school(s, name_ja="新宿区立第三中学校",
                                       school_code="C113210000030", board_id=csc.env.board_a,
                                       actor="test")
        _, token_c = clients.create_client(s, organization_id=school_c.id,
                                           role="school-system", name="C", actor="test")
        org_c = school_c.id
    serial = _hosted_seal(csc.url, token_c, csc.env.officer_a)
    cred = f"{org_c}-{serial}"
    digests = _digests(1)
    sad = _authorize(csc, token_c, cred, digests)
    status, _ = _call(csc.url, "POST", f"/api/v1/certificates/{serial}/revoke",
                      csc.env.officer_a, {"reason": "cessationOfOperation"})
    assert status == 200
    status, body = _sign(csc, token_c, cred, sad, digests)
    assert status == 400 and body["error_description"] == "Invalid parameter credentialID"
    status, listed, _ = _post(csc.url, "/csc/v2/credentials/list", token_c, {})
    assert listed["credentialIDs"] == []


def test_rsa_credential_pkcs1_via_pyhanko_and_pss(csc: Csc) -> None:
    with csc.env.store.session() as s:
        school = registry.add_school(s, name_ja="新宿区立第四中学校",
                                     school_code="C113210000040", board_id=csc.env.board_a,
                                     actor="test")
        _, token = clients.create_client(s, organization_id=school.id, role="school-system",
                                         name="D", actor="test")
        cred = f"{school.id}-"
    cred += _hosted_seal(csc.url, token, csc.env.officer_a, "RSA-2048")
    sealed = seal_pdf_remote(_pdf(), base_url=csc.url, token=token)
    (sig,) = PdfFileReader(BytesIO(sealed)).embedded_signatures
    root = asn1_x509.Certificate.load(ca_status.ca_chain(csc.env.store)[-1])
    result = validate_pdf_signature(sig, ValidationContext(trust_roots=[root],
                                                           allow_fetching=False))
    assert result.bottom_line, result.pretty_print_details()

    public = _leaf(csc, token, cred).public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    digest = _digests(1)[0]
    params = asn1_algos.RSASSAPSSParams({
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        "salt_length": 32,
    })
    for salt, expected in ((32, 200), (222, 400)):  # the HSM does salt = hash length only
        params["salt_length"] = salt
        sad = _authorize(csc, token, cred, [digest])
        status, body, _ = _post(csc.url, "/csc/v2/signatures/signHash", token,
                                {"credentialID": cred, "SAD": sad, "hashes": [_b64(digest)],
                                 "signAlgo": "1.2.840.113549.1.1.10",
                                 "signAlgoParams": _b64(params.dump())})
        assert status == expected, body
        if status == 200:
            public.verify(base64.b64decode(body["signatures"][0]), digest,
                          padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                          Prehashed(hashes.SHA256()))


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "why"), [
    ("credentials/info", b"not json", "not JSON"),  # ca.strictjson says why
    ("credentials/info", b"[1]", "JSON object"),
    ("credentials/info", b"[1, 2]", "JSON object"),
    ("credentials/info", {}, "credentialID"),
    ("credentials/info", {"credentialID": 7}, "credentialID"),
    ("credentials/info", {"credentialID": "nope"}, "credentialID"),
    ("credentials/info", {"credentialID": "1-ff"}, None),  # another org: 403, see below
    ("credentials/info", {"credentialID": "A", "certificates": "all"}, "certificates"),
    ("credentials/info", {"credentialID": "A", "certInfo": "yes"}, "certInfo"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": "1", "hash": ["x"]},
     "numSignatures"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 0, "hash": []},
     "numSignatures"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 11,
                               "hash": [_b64(b"\0" * 32)] * 11}, "too high"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1}, "hash"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1, "hash": "abc"},
     "hash"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1, "hash": ["%%%"]},
     "Base64"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1,
                               "hash": [_b64(b"\0" * 20)]}, "length"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 2,
                               "hash": [_b64(b"\0" * 32)]}, "numSignatures"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1,
                               "hash": [_b64(b"\0" * 32)], "hashAlgo": "1.2.3"}, "hashAlgo"),
    ("credentials/authorize", {"credentialID": "A", "numSignatures": 1,
                               "hash": [_b64(b"\0" * 32)], "hashes": [_b64(b"\1" * 32)]},
     "Conflicting"),
    ("signatures/signHash", {"credentialID": "A", "hash": [_b64(b"\0" * 32)],
                             "signAlgo": ECDSA_SHA256}, "SAD"),
    ("signatures/signHash", {"credentialID": "A", "SAD": "x", "hash": [_b64(b"\0" * 32)]},
     "signAlgo"),
    ("signatures/signHash", {"credentialID": "A", "SAD": "x", "hash": [_b64(b"\0" * 32)],
                             "signAlgo": ECDSA_SHA256, "operationMode": "A"},
     "operationMode"),
])
def test_malformed_requests_get_csc_errors(csc: Csc, path: str, body: Any,
                                           why: str | None) -> None:
    if isinstance(body, dict) and body.get("credentialID") == "A":
        body = {**body, "credentialID": csc.cred_a}
    raw = body if isinstance(body, bytes) else None
    status, answer, _ = _post(csc.url, f"/csc/v1/{path}", csc.school_a,
                              None if raw else body, raw=raw)
    if why is None:
        assert status == 403 and answer["error"] == "access_denied"
        return
    assert status == 400, answer
    assert answer["error"] == "invalid_request" and why in answer["error_description"]


def test_signhash_algorithm_errors(csc: Csc) -> None:
    digests = _digests(1)
    for algo, extra, why in [
        ("1.2.840.113549.1.1.11", {}, "signAlgo"),  # RSA on an EC key
        ("1.2.840.10045.2.1", {}, "hashAlgo"),  # plain ECDSA needs hashAlgo
        (ECDSA_SHA256, {"hashAlgo": SHA384}, "hashAlgo"),  # disagrees with signAlgo
        ("1.2.840.10045.4.3.3", {}, "length"),  # SHA-384 over 32-byte hashes
    ]:
        sad = _authorize(csc, csc.school_a, csc.cred_a, digests)
        status, body, _ = _post(csc.url, "/csc/v1/signatures/signHash", csc.school_a,
                                {"credentialID": csc.cred_a, "SAD": sad, "signAlgo": algo,
                                 "hash": [_b64(digests[0])], **extra})
        assert status == 400 and why in body["error_description"], (algo, body)


def test_authentication_and_routing_errors(csc: Csc) -> None:
    status, body, headers = _post(csc.url, "/csc/v2/credentials/list", None, {})
    assert status == 401 and body["error"] == "invalid_token"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = _post(csc.url, "/csc/v2/credentials/list", "kkn_forged", {})
    assert status == 401 and body["error"] == "invalid_token"
    status, body, _ = _post(csc.url, "/csc/v2/signatures/signDoc", csc.school_a, {})
    assert status == 404 and body["error"] == "invalid_request"
    status, body, _ = _post(csc.url, "/csc/v2/signatures/signHash", csc.school_a,
                            method="GET")
    assert status == 405 and body["error"] == "invalid_request"


def test_sad_key_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "csc-sad.key"
    key = load_sad_key(path)
    assert len(key) == 32 and load_sad_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["csc-sad.key"]
    with pytest.raises(ValueError, match="32 bytes"):
        CscService(None, None, b"short")  # type: ignore[arg-type]
