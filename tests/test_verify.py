"""Verification (signing/verify.py) of real artefacts: PDFs and JSON records sealed over HTTP by
the ``sealer`` school, checked with nothing but the root certificate and what the live server
publishes (OCSP, CRLs).

The certificates name ``settings.base_url`` (http://127.0.0.1:8080, not served in tests) for
OCSP and CRLs; the ``fetch`` hook here routes those URLs to the test server, so revocation
data really travels over HTTP, and refuses some of them to play an unreachable responder.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader

from ca import clients, crl, eseal, status
from ca.authorities import issuing_authority
from ca.issuer import CertificateOrder, issue
from ca.status import Credential
from signing.errors import BadDocument
from signing.pdf import SealOptions, seal_pdf, validation_material
from signing.tsa import ETSI_BTSP_POLICY, LocalTimeStamper, TimeStampAuthority
from signing.verify import (
    INDETERMINATE,
    TOTAL_FAILED,
    TOTAL_PASSED,
    FetchError,
    Limits,
    Report,
    TooComplex,
    TrustAnchors,
    _check_eseal_profile,
    _Verdict,
    default_fetch,
    verify,
    verify_jades,
    verify_pdf,
)
from tests.cafixtures import Env, _call, loopback_fetch
from tests.fixtures_pdf import guidance_record, minimal_pdf

SCHOOL = "新宿区立第一中学校"
SCHOOL_CODE = "C113210000010"
RECORD = json.dumps({"種別": "指導要録", "学年": 3, "氏名": "山田 花子"},
                    ensure_ascii=False).encode()


# -- HTTP helpers ---------------------------------------------------------------------------------


def _post(url: str, body: bytes, content_type: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": content_type, "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def seal_pdf_http(env: Env, level: str, token: str, document: bytes | None = None) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="level"\r\n\r\n{level}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="r.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n").encode()
    body += (document or guidance_record(pages=1)) + f"\r\n--{boundary}--\r\n".encode()
    code, raw = _post(f"{env.url}/api/v1/seal/pdf", body,
                      f"multipart/form-data; boundary={boundary}", token)
    assert code == 200, raw[:500]
    return raw


def seal_json_http(env: Env, level: str, token: str, record: bytes = RECORD,
                   query: str = "") -> bytes:
    code, raw = _post(f"{env.url}/api/v1/seal/json?level={level}{query}", record,
                      "application/json", token)
    assert code == 200, raw[:500]
    return raw


# -- fixtures -------------------------------------------------------------------------------------


@dataclass
class Kit:
    env: Env
    anchors: TrustAnchors
    base_url: str
    services: Any
    settings: Any
    cache: dict[str, bytes] = field(default_factory=dict)

    def fetch(self, refuse: tuple[str, ...] = (), calls: list[str] | None = None,
              ) -> Callable[[str, bytes | None, str | None], bytes]:
        """Route the certificates' base URL to the live server; refuse URLs containing any
        of ``refuse`` (an unreachable responder)."""
        def fetch(url: str, body: bytes | None, content_type: str | None) -> bytes:
            if calls is not None:
                calls.append(url)
            if any(r in url for r in refuse):
                raise FetchError(f"{url}: connection refused (test)")
            if url.startswith(self.base_url + "/"):
                url = self.env.url + url[len(self.base_url):]
            return loopback_fetch(url, body, content_type)
        return fetch

    def pdf(self, level: str) -> bytes:
        if level not in self.cache:
            self.cache[level] = seal_pdf_http(self.env, level, self.env.school)
        return self.cache[level]

    def json(self, level: str) -> bytes:
        key = f"json-{level}"
        if key not in self.cache:
            self.cache[key] = seal_json_http(self.env, level, self.env.school)
        return self.cache[key]

    def verify(self, data: bytes, **kw: Any) -> Report:
        kw.setdefault("fetch", self.fetch())
        report = verify(data, kw.pop("anchors", self.anchors), **kw)
        json.dumps(report.to_dict(), ensure_ascii=False)  # always JSON-serialisable
        return report


@pytest.fixture(scope="module")
def kit(sealer: Env, services: Any, settings: Any) -> Iterator[Kit]:
    authorities = crl.load_authorities(sealer.store, services.keys,
                                       root_name=settings.ca.root_name,
                                       issuing_name=settings.ca.issuing_name)
    crl.publish_due(sealer.store, authorities=authorities)  # the CDP URLs answer
    roots = [d for d in status.ca_chain(sealer.store)
             if asn1_x509.Certificate.load(d).self_signed != "no"]
    yield Kit(sealer, TrustAnchors(roots), settings.base_url, services, settings)


def _check(report: Report, name: str, index: int = 0) -> Any:
    return next(c for c in report.signatures[index].checks if c.name == name)


def _revocation_sources(report: Report, index: int = 0) -> set[str]:
    return {c["source"] for c in _check(report, "revocation", index).evidence["certificates"]}


def _new_school(env: Env, code: str) -> tuple[str, int]:
    """Another school of board A with its own hosted e-seal (so revoking it spares the
    module's shared ``sealer``)."""
    _, school = _call(env.url, "POST", "/api/v1/organizations", env.officer_a,
                      {"kind": "school", "name_ja": f"新宿区立第{code[-2:]}小学校",
                       "school_code": code})
    _call(env.url, "POST", f"/api/v1/organizations/{school['id']}/confirm", env.operator)
    with env.store.session() as s:
        _, token = clients.create_client(s, organization_id=school["id"], role="school-system",
                                         name="校務支援", actor="test")
    _, req = _call(env.url, "POST", "/api/v1/seal-requests", token,
                   {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    code_, req = _call(env.url, "POST", f"/api/v1/seal-requests/{req['id']}/approve",
                       env.officer_a)
    assert code_ == 200, req
    return token, school["id"]


def _assert_sealed_by_school(report: Report) -> None:
    who = report.signatures[0].sealed_by
    assert who["organization"] == SCHOOL
    assert who["organization_identifier"] == f"SC:JP-{SCHOOL_CODE}"
    assert who["school_code"] == SCHOOL_CODE and who["corporate_number"] is None
    assert who["country"] == "JP" and who["certificate_serial"]


# -- good seals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["B-B", "B-T", "B-LTA"])
def test_sealed_pdf_passes(kit: Kit, level: str) -> None:
    calls: list[str] = []
    report = kit.verify(kit.pdf(level), fetch=kit.fetch(calls=calls))
    assert report.indication == TOTAL_PASSED, report.to_dict()
    assert report.document_type == "pdf" and report.sub_indication is None
    _assert_sealed_by_school(report)
    seal = report.signatures[0]
    assert seal.kind == "seal" and seal.level == level
    assert seal.signing_time is not None
    assert all(c.passed is not False for c in seal.checks)
    assert {"integrity", "signature", "modifications", "certificate-path", "e-seal-profile",
            "revocation"} <= {c.name for c in seal.checks}
    if level == "B-B":
        assert seal.best_signature_time is None
        assert _revocation_sources(report) <= {"OCSP", "CRL"} and calls  # fetched over HTTP
        assert any(u.startswith(kit.base_url + "/ocsp") for u in calls)
    else:
        assert seal.best_signature_time is not None
        assert abs(seal.best_signature_time - seal.signing_time) < timedelta(seconds=5)
    if level == "B-LTA":
        assert [s.kind for s in report.signatures] == ["seal", "document-timestamp"]
        assert report.signatures[1].indication == TOTAL_PASSED
        # the seal's OCSP response and the root's CRL (for the issuing CA), from the DSS
        assert _revocation_sources(report) == {"embedded OCSP", "embedded CRL"}
        # everything needed is in the file: no network at all
        offline = verify_pdf(kit.pdf(level), kit.anchors, allow_online=False,
                             fetch=kit.fetch(refuse=("http",)))
        assert offline.indication == TOTAL_PASSED, offline.to_dict()


@pytest.mark.parametrize("level", ["B-B", "B-T", "B-LT"])
def test_sealed_json_passes(kit: Kit, level: str) -> None:
    report = kit.verify(kit.json(level))
    assert report.indication == TOTAL_PASSED, report.to_dict()
    assert report.document_type == "jades"
    _assert_sealed_by_school(report)
    seal = report.signatures[0]
    assert seal.level == level
    assert (seal.best_signature_time is None) == (level == "B-B")
    if level == "B-LT":
        assert _revocation_sources(report) == {"embedded OCSP", "embedded CRL"}  # rVals
        assert kit.verify(kit.json(level), allow_online=False).indication == TOTAL_PASSED
    # a dict works as well as the bytes
    assert verify_jades(json.loads(kit.json(level)), kit.anchors,
                        fetch=kit.fetch()).indication == TOTAL_PASSED


def test_detached_json(kit: Kit) -> None:
    jws = seal_json_http(kit.env, "B-T", kit.env.school, query="&detached=1&name=r.json")
    assert json.loads(jws).get("payload", "") == ""
    assert kit.verify(jws, detached_payload=RECORD).indication == TOTAL_PASSED
    # pretty-printed the same record still verifies: the seal covers its JCS form
    pretty = json.dumps(json.loads(RECORD), ensure_ascii=False, indent=2).encode()
    assert kit.verify(jws, detached_payload={"r.json": pretty}).indication == TOTAL_PASSED
    other = kit.verify(jws, detached_payload=RECORD.replace("花子".encode(), "太郎".encode()))
    assert (other.indication, other.sub_indication) == (TOTAL_FAILED, "HASH_FAILURE")
    missing = kit.verify(jws)
    assert (missing.indication, missing.sub_indication) == (INDETERMINATE,
                                                            "SIGNED_DATA_NOT_FOUND")


# -- tampering ------------------------------------------------------------------------------------


def test_content_changed_in_an_incremental_update_fails(kit: Kit) -> None:
    writer = IncrementalPdfFileWriter(io.BytesIO(kit.pdf("B-T")))
    cover = generic.StreamObject(stream_data=b"q 1 1 1 rg 55 625 490 22 re f Q")
    writer.add_stream_to_page(0, writer.add_object(cover))
    out = io.BytesIO()
    writer.write(out)
    report = kit.verify(out.getvalue())
    assert (report.indication, report.sub_indication) == (TOTAL_FAILED, "FORMAT_FAILURE")
    check = _check(report, "modifications")
    assert check.passed is False and check.evidence["modification_level"] == "OTHER"
    assert _check(report, "integrity").passed  # the signed bytes themselves are intact


def _contents(pdf: bytes) -> tuple[int, int]:
    """Offsets of the hex /Contents of the (last) signature: between the ByteRange gaps."""
    sig = PdfFileReader(io.BytesIO(pdf)).embedded_regular_signatures[-1]
    _, len1, start2, _ = sig.byte_range
    return len1, start2


def test_signature_copied_from_another_file_fails(kit: Kit) -> None:
    a = kit.pdf("B-B")
    b = seal_pdf_http(kit.env, "B-B", kit.env.school, guidance_record(pages=2))
    a1, a2 = _contents(a)
    b1, b2 = _contents(b)
    assert a2 - a1 == b2 - b1  # same reserve: the splice keeps the file's structure
    forged = b[:b1] + a[a1:a2] + b[b2:]
    report = kit.verify(forged)
    assert (report.indication, report.sub_indication) == (TOTAL_FAILED, "HASH_FAILURE")
    assert _check(report, "integrity").passed is False
    # a flipped byte inside the signed range is a hash failure too
    i = b.index(b"/Producer") if b"/Producer" in b else 200
    flipped = b[:i] + bytes([b[i] ^ 0x20]) + b[i + 1:]
    assert kit.verify(flipped).indication == TOTAL_FAILED


def test_wrong_trust_anchor(kit: Kit) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else's root")])
    now = datetime.now(UTC)
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    anchors = TrustAnchors([root.public_bytes(serialization.Encoding.DER)])
    for data in (kit.pdf("B-T"), kit.json("B-T")):
        report = kit.verify(data, anchors=anchors)
        assert (report.indication, report.sub_indication) == (INDETERMINATE,
                                                              "NO_CERTIFICATE_CHAIN_FOUND")
        _assert_sealed_by_school(report)  # who claims to have sealed it is still shown
    # no anchors at all means no trust, never the operating system's store
    assert kit.verify(kit.pdf("B-B"), anchors=TrustAnchors([])).sub_indication == \
        "NO_CERTIFICATE_CHAIN_FOUND"
    # the trust list withdrew our root: no chain either
    withdrawn = TrustAnchors(kit.anchors.roots, withdrawn=kit.anchors.roots)
    report = kit.verify(kit.pdf("B-B"), anchors=withdrawn)
    assert report.sub_indication == "NO_CERTIFICATE_CHAIN_FOUND"


def test_changed_json_byte_fails(kit: Kit) -> None:
    raw = kit.json("B-T")
    jws = json.loads(raw)
    payload = jws["payload"]
    i = len(payload) // 2
    swapped = payload[:i] + ("A" if payload[i] != "A" else "B") + payload[i + 1:]
    # one byte of the JSON file changed, inside the payload
    changed = raw.replace(payload.encode(), swapped.encode())
    assert len(changed) == len(raw) and sum(x != y for x, y in zip(changed, raw, strict=True)) == 1
    report = kit.verify(changed)
    assert (report.indication, report.sub_indication) == (TOTAL_FAILED, "SIG_CRYPTO_FAILURE")
    sig = jws["signature"]
    bad_sig = raw.replace(sig.encode(), (sig[:10] + ("A" if sig[10] != "A" else "B")
                                        + sig[11:]).encode())
    assert kit.verify(bad_sig).indication == TOTAL_FAILED
    # a changed timestamp token is reported and ignored as proof; the seal then stands as B-B
    token = jws["header"]["etsiU"][0]["sigTst"]["tstTokens"][0]["val"]
    der = bytearray(base64.b64decode(token))
    der[-5] ^= 0xFF
    jws["header"]["etsiU"][0]["sigTst"]["tstTokens"][0]["val"] = base64.b64encode(der).decode()
    report = kit.verify(json.dumps(jws).encode())
    assert _check(report, "signature-timestamp").passed is False
    assert report.signatures[0].best_signature_time is None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_jws_without_a_real_signature_is_rejected(kit: Kit, alg: str) -> None:
    real = json.loads(kit.json("B-B"))
    header = json.loads(base64.urlsafe_b64decode(real["protected"] + "=="))
    header["alg"] = alg
    protected = _b64url(json.dumps(header, separators=(",", ":")).encode())
    signing_input = f"{protected}.{real['payload']}".encode()
    # HS256 keyed with the public certificate: the classic key-confusion forgery
    key = base64.b64decode(header["x5c"][0])
    signature = "" if alg == "none" else _b64url(
        hmac.new(key, signing_input, hashlib.sha256).digest())
    forged = {"protected": protected, "payload": real["payload"], "signature": signature}
    report = kit.verify(json.dumps(forged).encode())
    assert (report.indication, report.sub_indication) == (TOTAL_FAILED, "FORMAT_FAILURE")
    assert alg in _check(report, "format").detail


def test_jws_naming_another_certificate(kit: Kit) -> None:
    real = json.loads(kit.json("B-B"))
    header = json.loads(base64.urlsafe_b64decode(real["protected"] + "=="))
    header["x5c"] = header["x5c"][::-1]  # the issuing CA first: x5t#S256 no longer matches
    real["protected"] = _b64url(json.dumps(header, separators=(",", ":")).encode())
    report = kit.verify(json.dumps(real).encode())
    assert (report.indication, report.sub_indication) == (INDETERMINATE,
                                                          "NO_SIGNING_CERTIFICATE_FOUND")


# -- revocation -----------------------------------------------------------------------------------


def test_ocsp_unreachable_falls_back_to_crl(kit: Kit) -> None:
    for data in (kit.pdf("B-B"), kit.json("B-B")):
        report = kit.verify(data, fetch=kit.fetch(refuse=("/ocsp",)))
        assert report.indication == TOTAL_PASSED, report.to_dict()
        entries = _check(report, "revocation").evidence["certificates"]
        assert {e["source"] for e in entries} == {"CRL"}
        assert entries[0]["attempts"][0]["source"] == "OCSP"
        assert "refused" in entries[0]["attempts"][0]["error"]
        assert entries[0]["at"] and entries[0]["url"].endswith(".crl")


@pytest.mark.parametrize("level", ["B-B", "B-T"])
def test_nothing_reachable_is_try_later(kit: Kit, level: str) -> None:
    for data in (kit.pdf(level), kit.json(level)):
        report = kit.verify(data, fetch=kit.fetch(refuse=("/ocsp", ".crl")))
        assert (report.indication, report.sub_indication) == (INDETERMINATE, "TRY_LATER")
        report = kit.verify(data, fetch=kit.fetch(refuse=("http",)))
        assert report.indication != TOTAL_PASSED
        # and with online checks off, data without embedded revocation never passes
        report = kit.verify(data, allow_online=False)
        assert (report.indication, report.sub_indication) == (INDETERMINATE, "TRY_LATER")


def test_revoked_certificate(kit: Kit, services: Any) -> None:
    env = kit.env
    token, school_id = _new_school(env, "B113210000022")
    credential = status.seal_credential(env.store, school_id)
    sealed = {level: seal_pdf_http(env, level, token) for level in ("B-B", "B-T", "B-LTA")}
    json_b = seal_json_http(env, "B-B", token)
    json_t = seal_json_http(env, "B-T", token)
    for data in (*sealed.values(), json_b, json_t):
        assert kit.verify(data).indication == TOTAL_PASSED
    time.sleep(1.5)  # genTime is rounded to the second: keep the revocation clearly after it
    code, body = _call(env.url, "POST", f"/api/v1/certificates/{credential.serial}/revoke",
                       env.officer_a, {"reason": "cessationOfOperation"})
    assert code == 200, body

    # no proof the seal existed before the revocation: REVOKED_NO_POE (EN 319 102-1)
    for data in (sealed["B-B"], json_b):
        report = kit.verify(data)
        assert (report.indication, report.sub_indication) == (INDETERMINATE, "REVOKED_NO_POE")
        entry = _check(report, "revocation").evidence["certificates"][0]
        assert entry["status"] == "revoked" and entry["source"] == "OCSP"
        assert entry["revoked_at"] > report.signatures[0].signing_time
    # timestamped before the revocation, status fetched now: the seal keeps its proof
    for data in (sealed["B-T"], json_t):
        report = kit.verify(data)
        assert report.indication == TOTAL_PASSED, report.to_dict()
        check = _check(report, "revocation")
        assert "keeps its proof" in check.detail
        entry = check.evidence["certificates"][0]
        assert entry["status"] == "revoked"
        assert entry["revoked_at"] > report.signatures[0].best_signature_time
    # the same with the CRL when the responder is down
    report = kit.verify(sealed["B-T"], fetch=kit.fetch(refuse=("/ocsp",)))
    assert report.indication == TOTAL_PASSED, report.to_dict()
    # B-LTA: its own embedded data answers, and that is enough
    report = kit.verify(sealed["B-LTA"])
    assert report.indication == TOTAL_PASSED, report.to_dict()

    # sealed after the revocation (with the old credential, in-process: the API refuses)
    authority = TimeStampAuthority(env.store, services.keys, policy_oid=ETSI_BTSP_POLICY)
    for level in ("B-B", "B-T"):
        late = seal_pdf(guidance_record(pages=1), credential, services.keys,
                        timestamper=LocalTimeStamper(authority),
                        options=SealOptions(level=level)).pdf
        report = kit.verify(late)
        assert (report.indication, report.sub_indication) == (INDETERMINATE, "REVOKED_NO_POE")
    code, _ = _post(f"{env.url}/api/v1/seal/json?level=B-B", RECORD, "application/json", token)
    assert code != 200


# -- expiry ---------------------------------------------------------------------------------------


def test_expired_certificate(kit: Kit, services: Any, settings: Any) -> None:
    """A 2-minute e-seal certificate on a hosted key; verified "later" by injecting ``now``."""
    env = kit.env
    _, school_id = _new_school(env, "B113210000033")
    long_lived = status.seal_credential(env.store, school_id)
    authority = issuing_authority(env.store, services.keys, settings.ca.issuing_name,
                                  settings.base_url)
    identifier = f"SC:JP-{'B113210000033'}"
    subject = eseal.eseal_subject(name_ja="新宿区立第33小学校", organization_identifier=identifier)
    public = x509.load_der_x509_certificate(long_lived.certificate).public_key()
    profile = services.profiles["eseal"]
    cert = issue(env.store, authority, CertificateOrder(
        profile=profile, subject=subject, public_key=public, organization_id=school_id,
        hsm_key_id=long_lived.key_id.hex(),
        not_after=datetime.now(UTC) + timedelta(minutes=2),
        extensions=eseal.eseal_extensions(profile, organization_identifier=identifier)),
        actor="test")
    der = cert.public_bytes(serialization.Encoding.DER)
    credential = Credential(long_lived.key_id, long_lived.algorithm, der,
                            (der, *long_lived.chain[1:]), format(cert.serial_number, "x"),
                            long_lived.issuer_name, school_id, "新宿区立第33小学校")
    tsa = LocalTimeStamper(TimeStampAuthority(env.store, services.keys,
                                              policy_oid=ETSI_BTSP_POLICY))
    material = validation_material(env.store, services.keys, credential,
                                   crl_issuers=[settings.ca.root_name])
    sealed = {level: seal_pdf(minimal_pdf(), credential, services.keys, timestamper=tsa,
                              validation=material, options=SealOptions(level=level)).pdf
              for level in ("B-B", "B-LTA")}
    for data in sealed.values():
        assert kit.verify(data).indication == TOTAL_PASSED
    later = cert.not_valid_after_utc + timedelta(minutes=10)
    report = kit.verify(sealed["B-B"], now=later)
    assert (report.indication, report.sub_indication) == (INDETERMINATE,
                                                          "OUT_OF_BOUNDS_NO_POE")
    # the timestamp proves the seal existed while the certificate was valid
    report = kit.verify(sealed["B-LTA"], now=later)
    assert report.indication == TOTAL_PASSED, report.to_dict()
    best = report.signatures[0].best_signature_time
    assert best is not None and best < cert.not_valid_after_utc


# -- odds and ends --------------------------------------------------------------------------------


def test_what_is_not_a_sealed_document(kit: Kit) -> None:
    for data, message in ((b"PK\x03\x04 zip", "neither"), (minimal_pdf(), "no seal"),
                          (b'{"a": 1}', "not a JAdES"), (b"%PDF-1.7\n garbage", "corrupt")):
        with pytest.raises(BadDocument, match=message):
            verify(data, kit.anchors)


def test_eseal_profile_check() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.jp")])
    now = datetime.now(UTC)
    tls = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
           .public_key(key.public_key()).serial_number(1)
           .not_valid_before(now).not_valid_after(now + timedelta(days=1))
           .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                        False), critical=True)
           .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    verdict = _Verdict()
    _check_eseal_profile(verdict, tls.public_bytes(serialization.Encoding.DER))
    assert (verdict.indication, verdict.sub) == (INDETERMINATE, "CHAIN_CONSTRAINTS_FAILURE")
    assert "contentCommitment" in verdict.checks[0].detail


def test_default_fetch_refuses_other_schemes() -> None:
    for url in ("file:///etc/passwd", "ftp://example.com/x.crl", "gopher://x"):
        with pytest.raises(FetchError, match="only http"):
            default_fetch(url)
    with pytest.raises(FetchError):
        default_fetch("http://127.0.0.1:9/nothing-listens-here")


def _cover(pdf: bytes) -> bytes:
    """An incremental update painting over page 1's content: a change no seal allows."""
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    cover = generic.StreamObject(stream_data=b"q 1 1 1 rg 55 625 490 22 re f Q")
    writer.add_stream_to_page(0, writer.add_object(cover))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_chained_difference_analysis_agrees_with_pyhankos_full_review(kit: Kit) -> None:
    """The default review (each revision against the one before, once per document) gives the
    verdicts of pyHanko's own review (each seal against every later revision) on documents
    with several seals, content changed after all of them, and content changed between two
    seals (the earlier seal fails, the later one passes)."""
    three = seal_pdf_http(kit.env, "B-T", kit.env.school,
                          seal_pdf_http(kit.env, "B-T", kit.env.school, kit.pdf("B-T")))
    between = seal_pdf_http(kit.env, "B-T", kit.env.school, _cover(kit.pdf("B-T")))
    cases = {"three seals": three, "changed after three": _cover(three),
             "changed between": between, "B-LTA": kit.pdf("B-LTA")}
    verdicts = {}
    for mode in ("chained", "full"):
        limits = Limits(diff_analysis=mode)
        verdicts[mode] = {
            name: [(s.indication, s.sub_indication) for s in kit.verify(doc, limits=limits)
                   .signatures] for name, doc in cases.items()}
    assert verdicts["chained"] == verdicts["full"], verdicts
    got = verdicts["chained"]
    assert got["three seals"] == [(TOTAL_PASSED, None)] * 3
    assert got["changed after three"] == [(TOTAL_FAILED, "FORMAT_FAILURE")] * 3
    assert got["changed between"] == [(TOTAL_FAILED, "FORMAT_FAILURE"), (TOTAL_PASSED, None)]
    assert all(i == TOTAL_PASSED for i, _ in got["B-LTA"])


def test_limits_refuse_before_work_and_budget_gives_a_verdict(kit: Kit) -> None:
    three = seal_pdf_http(kit.env, "B-B", kit.env.school,
                          seal_pdf_http(kit.env, "B-B", kit.env.school, kit.pdf("B-B")))
    for limits, says in ((Limits(max_signatures=2), "3 signatures"),
                         (Limits(max_revisions=2), "revisions"),
                         (Limits(max_objects=5), "objects"),
                         (Limits(max_pages=0), "pages")):
        with pytest.raises(TooComplex, match=says):
            kit.verify(three, limits=limits)
    with pytest.raises(TooComplex, match="nested deeper"):
        kit.verify(b'{"a":' + b"[" * 200 + b"]" * 200 + b"}", limits=Limits(max_nesting=100))
    report = kit.verify(three, limits=Limits(time_budget=0))
    assert report.indication == INDETERMINATE
    assert all("time budget" in s.checks[-1].detail for s in report.signatures), report


def test_unknown_diff_analysis_is_a_settings_error(tmp_path: Any) -> None:
    """A typo in [verify] diff_analysis stops start-up instead of choosing a mode silently."""
    from kakuin.settings import SettingsError, load_settings

    (tmp_path / "kakuin.toml").write_text('[verify]\ndiff_analysis = "ful"\n')
    with pytest.raises(SettingsError, match="diff_analysis"):
        load_settings(tmp_path)
    (tmp_path / "kakuin.toml").write_text('[verify]\ndiff_analysis = "full"\n')
    assert load_settings(tmp_path).verify.diff_analysis == "full"
