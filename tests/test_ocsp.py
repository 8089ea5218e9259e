"""The OCSP responder over real HTTP, checked with openssl, cryptography and pkilint, on SQLite
and PostgreSQL: statuses and reasons, SHA-1 and SHA-256 CertIDs, nonces, several CertIDs, GET
and POST, RFC 5019 headers, malformed input, the HSM-free hot path, responder renewal; plus
the /pki certificate and CRL routes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import core
from asn1crypto import keys as asn1_keys
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from werkzeug.serving import make_server

from ca import ocsp, protocol_api
from ca.errors import NotFound
from ca.issuer import CertificateOrder, issue
from ca.models import Certificate, Crl, OcspResponse
from ca.store import Store, upgrade
from hsm.errors import HsmUnavailable
from kakuin.app import create_app
from kakuin.services import Services
from tests.cafixtures import _copy_ca_rows
from tests.dbutil import database, sqlite_url

TOOLS = Path(sys.executable).parent
Status = x509_ocsp.OCSPResponseStatus
CertStatus = x509_ocsp.OCSPCertStatus


class CountingKeys:
    """The real key manager, counting signatures; ``fail`` makes the HSM look unplugged."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.signatures = 0
        self.fail = False

    def sign_digest(self, *args: Any, **kwargs: Any) -> bytes:
        if self.fail:
            raise HsmUnavailable("token removed (test)")
        self.signatures += 1
        return self.inner.sign_digest(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Env:
    url: str
    store: Store
    keys: CountingKeys
    svc: Services
    pki: Path
    issuer: x509.Certificate
    leaves: dict[str, Path] = field(default_factory=dict)
    certs: dict[str, x509.Certificate] = field(default_factory=dict)
    tmp: Path = Path()


def _serve(settings: Any, svc: Services) -> tuple[Any, str]:
    app = create_app(settings, svc)
    if "ca_protocol" not in app.blueprints:
        app.register_blueprint(protocol_api.bp)
    app.config.setdefault("KAKUIN_PKI_DIR", str(settings.pki_dir))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, settings: Any, services: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ocsp")
    with database(request.param, tmp) as url:
        upgrade(url)
        store = Store(url)
        _copy_ca_rows(services.store, store)
        keys = CountingKeys(services.keys)
        svc = Services(settings, store, keys, services.profiles)  # type: ignore[arg-type]
        server, base = _serve(settings, svc)
        try:
            authority = svc.ca.authority()
            e = Env(base, store, keys, svc, settings.pki_dir, authority.certificate, tmp=tmp)
            for name in ("alpha", "bravo", "charlie"):
                key = ec.generate_private_key(ec.SECP256R1())
                subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"leaf {name}")])
                cert = issue(store, authority,
                             CertificateOrder(services.profiles["tsa"], subject, key.public_key()),
                             actor="test")
                path = tmp / f"{name}.pem"
                path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                e.leaves[name], e.certs[name] = path, cert
            yield e
        finally:
            server.shutdown()
            store.dispose(close=True)


def _set_status(env: Env, name: str, status: str, reason: str | None = None,
                invalidity: datetime | None = None, *, resign: bool = True) -> None:
    serial = format(env.certs[name].serial_number, "x")
    with env.store.session() as s:
        row = s.scalars(select(Certificate).where(Certificate.serial == serial)).one()
        row.status = status
        row.revocation_reason = reason
        row.revoked_at = datetime.now(UTC) - timedelta(minutes=1) if reason else None
        row.invalidity_date = invalidity
        issuer_name = row.issuer_name
    if resign:
        ocsp.resign(env.store, env.keys, issuer_name, serial)  # type: ignore[arg-type]


def _openssl(env: Env, name: str, *options: str) -> str:
    pki = env.pki
    out = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(pki / "kakuin-issuing-ca.pem"), *options,
         "-cert", str(env.leaves[name]), "-url", f"{env.url}/ocsp",
         "-CAfile", str(pki / "kakuin-root-ca.pem"),
         "-verify_other", str(pki / "kakuin-issuing-ca.pem")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Response verify OK" in text, text
    return text


def _status_line(text: str, env: Env, name: str) -> str:
    prefix = f"{env.leaves[name]}: "
    return next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix):]


VARIANTS = [(), ("-no_nonce",), ("-sha256",), ("-sha256", "-no_nonce")]


def test_openssl_good_revoked_held_good(env: Env) -> None:
    for variant in VARIANTS:
        assert _status_line(_openssl(env, "alpha", *variant), env, "alpha") == "good"

    _set_status(env, "bravo", "revoked", "keyCompromise")
    for variant in VARIANTS:
        text = _openssl(env, "bravo", *variant)
        assert _status_line(text, env, "bravo") == "revoked", text
        assert "Reason: keyCompromise" in text
        assert "Revocation Time:" in text

    _set_status(env, "alpha", "hold", "certificateHold")
    for variant in VARIANTS:
        text = _openssl(env, "alpha", *variant)
        assert _status_line(text, env, "alpha") == "revoked"
        assert "Reason: certificateHold" in text

    _set_status(env, "alpha", "issued")
    for variant in VARIANTS:
        assert _status_line(_openssl(env, "alpha", *variant), env, "alpha") == "good"


def test_status_change_visible_without_resign(env: Env) -> None:
    """Whoever changes a status may forget resign(): the hot path still never serves the
    pre-signed row once it contradicts the certificate."""
    assert _status_line(_openssl(env, "charlie", "-no_nonce"), env, "charlie") == "good"
    _set_status(env, "charlie", "hold", "certificateHold", resign=False)
    text = _openssl(env, "charlie", "-no_nonce")
    assert "Reason: certificateHold" in text
    _set_status(env, "charlie", "issued", resign=False)
    assert _status_line(_openssl(env, "charlie", "-no_nonce", "-sha256"), env, "charlie") == "good"


# --- requests built by hand -------------------------------------------------------------------


def _cert_id(env: Env, cert: x509.Certificate | int, algorithm: str = "sha1",
             issuer: x509.Certificate | None = None) -> dict[str, Any]:
    issuer = issuer or env.issuer
    serial = cert if isinstance(cert, int) else cert.serial_number
    spki = issuer.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    key_bits = bytes(asn1_keys.PublicKeyInfo.load(spki)["public_key"].contents[1:])
    return {
        "hash_algorithm": {"algorithm": algorithm},
        "issuer_name_hash": hashlib.new(algorithm, issuer.subject.public_bytes()).digest(),
        "issuer_key_hash": hashlib.new(algorithm, key_bits).digest(),
        "serial_number": serial,
    }


def _request(cert_ids: list[dict[str, Any]], nonce: bytes | None = None, *,
             extra: list[dict[str, Any]] | None = None) -> bytes:
    """An OCSPRequest; the nonce goes in as RFC 9654 says (extnValue = DER OCTET STRING)."""
    tbs: dict[str, Any] = {"request_list": [{"req_cert": c} for c in cert_ids]}
    extensions = list(extra or [])
    if nonce is not None:
        extensions.append({"extn_id": "nonce", "extn_value": nonce})
    if extensions:
        tbs["request_extensions"] = extensions
    return asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    head = bytes((size,)) if size < 0x80 else bytes((0x81, size))
    assert size < 0x100
    return bytes((tag,)) + head + body


def _request_with_bare_nonce(cert_id: dict[str, Any], nonce: bytes) -> bytes:
    """What some old clients send: the nonce bytes directly in extnValue."""
    cid = asn1_ocsp.CertId(cert_id).dump()
    nonce_oid = bytes.fromhex("06092b0601050507300102")
    extension = _tlv(0x30, nonce_oid + _tlv(0x04, nonce))
    tbs = _tlv(0x30, _tlv(0x30, _tlv(0x30, cid)) + _tlv(0xA2, _tlv(0x30, extension)))
    return _tlv(0x30, tbs)


def _post(env: Env, body: bytes, path: str = "/ocsp",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"Content-Type": "application/ocsp-request", **(headers or {})}
    req = urllib.request.Request(env.url + path, data=body, method="POST", headers=hdrs)
    return _fetch(req)


def _get(env: Env, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    return _fetch(urllib.request.Request(env.url + path, headers=headers or {}))


def _fetch(req: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _response(body: bytes) -> x509_ocsp.OCSPResponse:
    return x509_ocsp.load_der_ocsp_response(body)


def _verify(env: Env, resp: x509_ocsp.OCSPResponse) -> None:
    """Signed by the delegated responder, which the issuing CA issued for OCSP signing."""
    (responder,) = resp.certificates
    responder.verify_directly_issued_by(env.issuer)
    eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING in eku
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    public = responder.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert resp.signature_hash_algorithm is not None
    public.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
    digest = hashlib.sha1(public.public_bytes(serialization.Encoding.X962,  # noqa: S324
                                              serialization.PublicFormat.UncompressedPoint))
    assert resp.responder_key_hash == digest.digest()


def test_nonce_echoed_per_rfc_9654(env: Env) -> None:
    cid = _cert_id(env, env.certs["alpha"], "sha256")
    for size in (1, 16, 32, 128):
        nonce = os.urandom(size)
        status, headers, body = _post(env, _request([cid], nonce))
        resp = _response(body)
        assert status == 200 and resp.response_status is Status.SUCCESSFUL
        _verify(env, resp)
        echoed = resp.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert echoed == nonce
        raw = asn1_ocsp.OCSPResponse.load(body).basic_ocsp_response["tbs_response_data"][
            "response_extensions"][0]["extn_value"].contents
        assert raw == core.OctetString(nonce).dump()  # extnValue as sent, byte for byte
        assert headers["Cache-Control"] == "no-store" and "ETag" not in headers
    # Old clients put the bare bytes in extnValue: echoed as they came.
    bare = b"\x01" + os.urandom(19)
    resp = _response(_post(env, _request_with_bare_nonce(cid, bare))[2])
    assert resp.response_status is Status.SUCCESSFUL
    nonce_oid = bytes.fromhex("06092b0601050507300102")
    assert nonce_oid + _tlv(0x04, bare) in resp.tbs_response_bytes
    for bad in (_request([cid], b""), _request([cid], os.urandom(129))):
        assert _response(_post(env, bad)[2]).response_status is Status.MALFORMED_REQUEST


def test_several_cert_ids_in_one_request(env: Env) -> None:
    _set_status(env, "bravo", "revoked", "keyCompromise",
                invalidity=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    foreign = x509.load_pem_x509_certificate((env.pki / "kakuin-root-ca.pem").read_bytes())
    ids = [
        _cert_id(env, env.certs["alpha"], "sha256"),
        _cert_id(env, env.certs["bravo"], "sha1"),
        _cert_id(env, 0x1234567890ABCDEF, "sha256"),  # never issued
        _cert_id(env, env.issuer, "sha1", issuer=foreign),  # the root's business
        _cert_id(env, env.certs["alpha"], "sha384"),
    ]
    for nonce in (None, os.urandom(32)):
        _, headers, body = _post(env, _request(ids, nonce))
        resp = _response(body)
        assert resp.response_status is Status.SUCCESSFUL
        _verify(env, resp)
        singles = list(resp.responses)
        assert [s.certificate_status for s in singles] == [
            CertStatus.GOOD, CertStatus.REVOKED, CertStatus.UNKNOWN, CertStatus.UNKNOWN,
            CertStatus.GOOD]
        assert [s.serial_number for s in singles] == [i["serial_number"] for i in ids]
        assert [s.hash_algorithm.name for s in singles] == ["sha256", "sha1", "sha256", "sha1",
                                                             "sha384"]
        assert singles[1].revocation_reason is x509.ReasonFlags.key_compromise
        parsed = asn1_ocsp.OCSPResponse.load(body).basic_ocsp_response["tbs_response_data"]
        (ext,) = parsed["responses"][1]["single_extensions"]
        assert ext["extn_id"].native == "invalidity_date"
        assert ext["extn_value"].native == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        assert parsed["responses"][0]["single_extensions"].native is None
        assert ("ETag" in headers) is (nonce is None)


def test_unknown_serial_and_foreign_issuer(env: Env) -> None:
    resp = _response(_post(env, _request([_cert_id(env, 0xDEADBEEF)]))[2])
    assert resp.response_status is Status.SUCCESSFUL
    assert resp.certificate_status is CertStatus.UNKNOWN
    _verify(env, resp)
    with env.store.session() as s:  # an unknown serial never gets a stored row
        assert s.scalars(select(OcspResponse).where(OcspResponse.serial == "deadbeef")).first() \
            is None
    root = x509.load_pem_x509_certificate((env.pki / "kakuin-root-ca.pem").read_bytes())
    for cid in (_cert_id(env, env.issuer, issuer=root),
                {**_cert_id(env, env.certs["alpha"]), "hash_algorithm": {"algorithm": "md5"}}):
        resp = _response(_post(env, _request([cid]))[2])
        assert resp.response_status is Status.UNAUTHORIZED


def test_presigned_path_does_not_touch_the_hsm(env: Env) -> None:
    body = _request([_cert_id(env, env.certs["alpha"], "sha1")])
    first = _post(env, body)[2]  # may sign (first request, or stale)
    before = env.keys.signatures
    with env.store.session() as s:
        row = s.scalars(select(OcspResponse).where(
            OcspResponse.serial == format(env.certs["alpha"].serial_number, "x"),
            OcspResponse.hash_algorithm == "sha1")).one()
        produced = row.produced_at
    for _ in range(5):
        assert _post(env, body)[2] == first
    sha256_body = _request([_cert_id(env, env.certs["alpha"], "sha256")])
    sha256 = _post(env, sha256_body)[2]  # its own row, one SingleResponse each (may sign)
    assert sha256 != first
    assert [s.hash_algorithm.name for s in _response(sha256).responses] == ["sha256"]
    assert [s.hash_algorithm.name for s in _response(first).responses] == ["sha1"]
    before = env.keys.signatures
    for _ in range(3):
        assert _post(env, body)[2] == first and _post(env, sha256_body)[2] == sha256
    assert env.keys.signatures == before
    with env.store.session() as s:
        row = s.scalars(select(OcspResponse).where(OcspResponse.id == row.id)).one()
        assert row.produced_at == produced and row.der == first

    # With the HSM gone, pre-signed answers still flow; what needs a signature says tryLater.
    env.keys.fail = True
    try:
        assert _post(env, body)[2] == first
        nonce = _post(env, _request([_cert_id(env, env.certs["alpha"])], os.urandom(32)))[2]
        assert _response(nonce).response_status is Status.TRY_LATER
    finally:
        env.keys.fail = False


def _http_time(value: str) -> datetime:
    return parsedate_to_datetime(value).astimezone(UTC)


def test_get_and_rfc_5019_headers(env: Env) -> None:
    der = _request([_cert_id(env, env.certs["alpha"], "sha256")])
    _, post_headers, post_body = _post(env, der)
    encoded = base64.b64encode(der).decode()
    for path in (urllib.parse.quote(encoded, safe=""), encoded,
                 base64.urlsafe_b64encode(der).decode().rstrip("=")):
        status, headers, body = _get(env, f"/ocsp/{path}")
        assert status == 200, body
        assert body == post_body
        assert headers["Content-Type"] == "application/ocsp-response"
        resp = _response(body)
        _verify(env, resp)
        # Pre-signed: one SingleResponse, for the CertID asked about (RFC 5019 §2.2.1).
        (single,) = resp.responses
        assert single.hash_algorithm.name == "sha256"
        assert resp.certificate_status is CertStatus.GOOD
        assert single.next_update_utc is not None
        assert headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()}"'
        assert _http_time(headers["Last-Modified"]) == resp.produced_at_utc
        assert _http_time(headers["Expires"]) == single.next_update_utc
        directives = [d.strip() for d in headers["Cache-Control"].split(",")]
        assert directives[1:] == ["public", "no-transform", "must-revalidate"]
        max_age = int(directives[0].removeprefix("max-age="))
        left = (single.next_update_utc - datetime.now(UTC)).total_seconds()
        assert left - 5 <= max_age <= left + 1
        assert single.this_update_utc <= datetime.now(UTC) < single.next_update_utc
        assert single.next_update_utc - single.this_update_utc == ocsp.DEFAULT_VALIDITY
    assert post_headers["ETag"] == headers["ETag"]
    status, headers, body = _get(env, f"/ocsp/{encoded}", {"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_get_keeps_double_slashes(env: Env) -> None:
    """Base64 may contain '//'; Werkzeug would merge it into one and break the request."""
    cid = _cert_id(env, env.certs["alpha"], "sha256")
    for _ in range(20_000):
        der = _request([cid], os.urandom(16))
        encoded = base64.b64encode(der).decode()
        if "//" in encoded:
            break
    else:
        pytest.fail("no request with '//' in its base64 found")
    status, _, body = _get(env, f"/ocsp/{encoded}")
    assert status == 200
    resp = _response(body)
    assert resp.response_status is Status.SUCCESSFUL
    assert resp.certificate_status is CertStatus.GOOD  # a nonce request: one SingleResponse


def test_malformed_requests(env: Env) -> None:
    good = _request([_cert_id(env, env.certs["alpha"])])
    critical = {"extn_id": "1.2.3.4", "critical": True, "extn_value": b"\x05\x00"}
    too_many = _request([_cert_id(env, env.certs["alpha"])] * (ocsp.MAX_CERT_IDS + 1))
    bodies = [b"", b"garbage", b"\x30\x00", good[:-3], good + b"\x00", good[:10],
              good + os.urandom(ocsp.MAX_REQUEST_BYTES), os.urandom(100_000),
              too_many, _request([_cert_id(env, env.certs["alpha"])], extra=[critical]),
              _request([])]
    for body in bodies:
        status, headers, raw = _post(env, body)
        assert status == 200, (body[:20], raw)
        assert headers["Content-Type"] == "application/ocsp-response"
        assert headers["Cache-Control"] == "no-store"
        assert _response(raw).response_status is Status.MALFORMED_REQUEST, body[:20]
    for path in ("/ocsp/not*base64", "/ocsp/%25%25", "/ocsp/AAAA", "/ocsp/", "/ocsp",
                 "/ocsp/" + "A" * 20_000):
        status, _, raw = _get(env, path)
        assert status == 200, path
        assert _response(raw).response_status is Status.MALFORMED_REQUEST, path


def test_responses_lint_clean(env: Env) -> None:
    cid = _cert_id(env, env.certs["alpha"], "sha256")
    _set_status(env, "bravo", "revoked", "keyCompromise")
    samples = {
        "presigned": _request([cid]),
        "nonce": _request([cid], os.urandom(32)),
        "revoked": _request([_cert_id(env, env.certs["bravo"])], os.urandom(16)),
        "several": _request([cid, _cert_id(env, env.certs["bravo"]), _cert_id(env, 7)]),
        "unknown": _request([_cert_id(env, 0xABCDEF)]),
        "malformed": b"garbage",
        "unauthorized": _request([{**cid, "issuer_key_hash": b"\x00" * 32}]),
    }
    for name, body in samples.items():
        path = env.tmp / f"{name}.ocsp"
        path.write_bytes(_post(env, body)[2])
        out = subprocess.run([str(TOOLS / "lint_ocsp_response"), "lint", str(path)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert "ERROR" not in out.stdout and "FATAL" not in out.stdout, (name, out.stdout)
        assert "WARNING" not in out.stdout, (name, out.stdout)
        assert out.returncode == 0, (name, out.stdout, out.stderr)


def test_refresh_and_resign_bookkeeping(env: Env) -> None:
    alpha = format(env.certs["alpha"].serial_number, "x")
    name = env.svc.ca.issuing_name
    responder = ocsp.Responder.load(env.store, env.keys, name)  # type: ignore[arg-type]
    # Nothing is stale just after signing; half-way through, everything is.
    responder.resign(alpha)
    assert responder.refresh_stale() == 0
    later = datetime.now(UTC) + ocsp.DEFAULT_VALIDITY / 2 + timedelta(minutes=1)
    with env.store.session() as s:
        rows = s.scalars(select(OcspResponse)).all()
    assert responder.refresh_stale(later) == len(rows)
    with env.store.session() as s:
        refreshed_rows = s.scalars(select(OcspResponse).where(OcspResponse.serial == alpha)).all()
        assert sorted(r.hash_algorithm for r in refreshed_rows) == ["sha1", "sha256"]
        assert {r.this_update for r in refreshed_rows} == {later.replace(microsecond=0)}
    # Bring the rows back to the present for whatever runs next.
    for row in rows:
        responder.resign(row.serial)

    # The hot path refreshes a half-spent row itself, and serves it unrefreshed while the
    # HSM is away (it is still valid and still true).
    body = _request([_cert_id(env, env.certs["alpha"], "sha256")])
    current = responder.respond(body)
    env.keys.fail = True
    try:
        assert responder.respond(body, later).der == current.der
    finally:
        env.keys.fail = False
    refreshed_result = responder.respond(body, later)
    assert refreshed_result.this_update == later.replace(microsecond=0)
    assert responder.respond(body, later).der == refreshed_result.der  # stored, reused
    responder.resign(alpha)
    with pytest.raises(NotFound):
        responder.resign(0xFEEDFACE)
    # include_missing pre-signs certificates nobody has asked about yet (warm-up).
    with env.store.session() as s:
        s.query(OcspResponse).filter(OcspResponse.serial == alpha).delete()
    assert responder.refresh_stale(include_missing=True) >= 2
    with env.store.session() as s:
        rows = s.scalars(select(OcspResponse).where(OcspResponse.serial == alpha)).all()
        assert sorted(r.hash_algorithm for r in rows) == ["sha1", "sha256"]


def test_pki_certificates(env: Env) -> None:
    for name in ("kakuin-root-ca", "kakuin-issuing-ca", "kakuin-issuing-ca-ocsp"):
        status, headers, body = _get(env, f"/pki/{name}.crt")
        assert status == 200
        assert headers["Content-Type"] == "application/pkix-cert"
        assert body == (env.pki / f"{name}.crt").read_bytes()
        x509.load_der_x509_certificate(body)
    for path in ("/pki/nope.crt", "/pki/..%2Fkakuin.sqlite3.crt", "/pki/chain.crt",
                 "/pki/.hidden.crt", "/pki/%2E%2E.crt"):
        status, headers, _ = _get(env, path)
        assert status == 404, path
        assert headers["Content-Type"] == "application/problem+json"


def test_pki_crl(env: Env) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    status, headers, _ = _get(env, "/pki/kakuin-issuing-ca.crl")
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    with env.store.session() as s:
        for number, der in ((1, b"\x30\x01\x01"), (2, b"\x30\x01\x02")):
            s.add(Crl(issuer_name="kakuin-issuing-ca", number=number, this_update=now,
                      next_update=now + timedelta(hours=24), der=der))
    status, headers, body = _get(env, "/pki/kakuin-issuing-ca.crl")
    assert status == 200 and body == b"\x30\x01\x02"
    assert headers["Content-Type"] == "application/pkix-crl"
    assert _http_time(headers["Expires"]) == now + timedelta(hours=24)
    status, _, _ = _get(env, "/pki/kakuin-issuing-ca.crl", {"If-None-Match": headers["ETag"]})
    assert status == 304
    assert _get(env, "/pki/nobody.crl")[0] == 404


# --- renewal, on a database of its own (it issues certificates dated in the future) -----------


def test_responder_certificate_renewal(settings: Any, services: Any, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade(url)
    store = Store(url)
    try:
        _copy_ca_rows(services.store, store)
        svc = Services(settings, store, services.keys, services.profiles)
        authority = svc.ca.authority()
        profile = services.profiles["ocsp-responder"]
        assert ocsp.ensure_responder_certificate(store, svc.keys, authority, profile) is None

        current = ocsp.Responder.load(store, svc.keys, authority.name).certificate
        soon = current.not_valid_after_utc - timedelta(days=10)
        new = ocsp.ensure_responder_certificate(store, svc.keys, authority, profile, now=soon)
        assert new is not None
        try:
            assert new.serial_number != current.serial_number
            assert new.subject == current.subject
            assert new.public_key() != current.public_key()  # a fresh HSM key
            assert new.not_valid_before_utc == soon.replace(microsecond=0)
            new.extensions.get_extension_for_class(x509.OCSPNoCheck)
            new.verify_directly_issued_by(authority.certificate)  # type: ignore[arg-type]
            # Done once: running the scheduler again does nothing.
            assert ocsp.ensure_responder_certificate(store, svc.keys, authority, profile,
                                                     now=soon) is None
            # Today the old certificate still answers; from `soon` the new one does.
            assert ocsp.Responder.load(store, svc.keys, authority.name).certificate == current
            responder = ocsp.Responder.load(store, svc.keys, authority.name, now=soon)
            assert responder.certificate == new
            leaf = x509.load_der_x509_certificate(
                (settings.pki_dir / "kakuin-issuing-ca-tsa.crt").read_bytes())
            req = x509_ocsp.OCSPRequestBuilder().add_certificate(
                leaf, authority.certificate, hashes.SHA256()).build()
            result = responder.respond(req.public_bytes(serialization.Encoding.DER), now=soon)
            resp = _response(result.der)
            assert resp.certificates == [new]
            for single in resp.responses:
                assert single.certificate_status is CertStatus.GOOD
                assert single.next_update_utc == soon.replace(microsecond=0) + ocsp.DEFAULT_VALIDITY
        finally:
            with store.session() as s:
                row = s.scalars(select(Certificate).where(
                    Certificate.serial == format(new.serial_number, "x"))).one()
                key_id = row.hsm_key_id
            assert key_id is not None
            ref = svc.keys.find(key_id=bytes.fromhex(key_id))
            assert ref.label == f"{authority.name}-ocsp-{soon:%Y%m%dT%H%M%SZ}"
            svc.keys.destroy(ref)
    finally:
        store.dispose(close=True)


def test_one_cert_id_gets_one_single_response(env: Env) -> None:
    """RFC 6960 §4.2.2.3 / RFC 5019 §2.2.1: a request for one certificate is answered with one
    SingleResponse, for the CertID it sent, over POST and GET and for either hash, since
    cryptography's ``certificate_status`` (and clients like it) refuse any other count.
    Cross-checked with ``openssl ocsp -respin``."""
    pki = env.pki
    for name in ("alpha", "bravo"):
        for algorithm in (hashes.SHA1(), hashes.SHA256()):  # noqa: S303
            der = (x509_ocsp.OCSPRequestBuilder()
                   .add_certificate(env.certs[name], env.issuer, algorithm)
                   .build().public_bytes(serialization.Encoding.DER))
            request = x509_ocsp.load_der_ocsp_request(der)
            encoded = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
            for method, (status, _, body) in (("POST", _post(env, der)),
                                              ("GET", _get(env, f"/ocsp/{encoded}"))):
                assert status == 200, (method, body)
                resp = _response(body)
                assert resp.response_status is Status.SUCCESSFUL, method
                _verify(env, resp)
                assert len(list(resp.responses)) == 1, (name, algorithm.name, method)
                assert resp.certificate_status in (CertStatus.GOOD, CertStatus.REVOKED)
                assert resp.hash_algorithm.name == algorithm.name
                assert resp.serial_number == request.serial_number
                assert resp.issuer_name_hash == request.issuer_name_hash
                assert resp.issuer_key_hash == request.issuer_key_hash
                saved = env.tmp / f"resp-{name}-{algorithm.name}-{method}.der"
                saved.write_bytes(body)
                out = subprocess.run(
                    ["openssl", "ocsp", "-respin", str(saved), "-resp_text",
                     *(["-sha256"] if algorithm.name == "sha256" else []),  # before -cert
                     "-issuer", str(pki / "kakuin-issuing-ca.pem"), "-cert", str(env.leaves[name]),
                     "-CAfile", str(pki / "kakuin-root-ca.pem"),
                     "-verify_other", str(pki / "kakuin-issuing-ca.pem")],
                    capture_output=True, text=True, timeout=60, check=False)
                text = out.stdout + out.stderr
                assert out.returncode == 0 and "Response verify OK" in text, text
                assert text.count("Cert Status:") == 1, text
                assert f"Hash Algorithm: {algorithm.name}" in text, text
                assert _status_line(text, env, name) in ("good", "revoked"), text
