"""Hostile input over real HTTP: every case answers 4xx problem+json (or the protocol's own
error), never a 500; the strict JSON reader refuses the same things on every JSON endpoint;
nothing is signed in the HSM when the audit entry for it could not be written."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from ca import strictjson
from ca.models import AuditEntry, SealRequest
from tests.cafixtures import Env
from tests.fixtures_pdf import encrypted_pdf, guidance_record, minimal_pdf

DEEP = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJ = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
BAD_BODIES = {
    "duplicate": b'{"kind": "school", "kind": "board"}',
    "nan": b'{"kind": NaN}',
    "infinity": b'{"kind": -Infinity}',
    "deep-array": DEEP,
    "deep-object": DEEP_OBJ,
    "not-utf8": b'{"kind": "\xff\xfe"}',
    "utf8-surrogate": b'{"kind": "\xed\xa0\x80"}',
    "escaped-lone-surrogate": b'{"name_ja": "\\ud800"}',
    "bom": b'\xef\xbb\xbf{"kind": "school"}',
    "huge-number": b'{"organization_id": 1' + b"0" * 5000 + b"}",
    "overflow-float": b'{"organization_id": 1e400}',
}


def _request(url: str, method: str = "GET", body: bytes | None = None,
             content_type: str | None = None, token: str | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _problem(code: int, headers: dict[str, str], raw: bytes, status: int | None = None,
             ) -> dict[str, Any]:
    assert code < 500, (code, raw[:500])
    if status is not None:
        assert code == status, (code, raw[:500])
    assert headers["Content-Type"] == "application/problem+json", (code, headers, raw[:300])
    body: dict[str, Any] = json.loads(raw)
    assert body["status"] == code
    return body


def _multipart(fields: dict[str, str], file: bytes | None, filename: str = "d.pdf",
               ) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                     + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _audit_count(env: Env) -> int:
    with env.store.session() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)


# -- the reader itself (no HTTP) --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_strict_reader_refuses(name: str) -> None:
    with pytest.raises(strictjson.BadJSON):
        strictjson.loads(BAD_BODIES[name])


def test_strict_reader_accepts_ordinary_json_and_is_linear() -> None:
    assert strictjson.loads(b'{"a": [1, 2.5, "\\ud83d\\ude00", {"b": null}], "c": "]"}') == {
        "a": [1, 2.5, "😀", {"b": None}], "c": "]"}
    # Brackets inside strings do not count; an unterminated string does not backtrack.
    assert strictjson.depth('{"x": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == 1
    with pytest.raises(strictjson.BadJSON, match="not JSON"):
        strictjson.loads('"' + '\\"' * 200_000)
    assert len(strictjson.loads(b"[" + b",".join(b"[1]" for _ in range(50_000)) + b"]")) == 50_000


# -- every JSON endpoint, the same refusals ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_ca_api_refuses_bad_json_with_400(env: Env, name: str) -> None:
    for path in ("/api/v1/organizations", "/api/v1/seal-requests"):
        code, headers, raw = _request(env.url + path, "POST", BAD_BODIES[name],
                                      "application/json", env.officer_a)
        body = _problem(code, headers, raw, 400)
        assert body["type"] == "urn:kakuin:problem:api/bad-json", body


def test_ca_api_no_longer_takes_the_last_duplicate(env: Env) -> None:
    with env.store.session() as s:
        before = s.scalar(select(func.count()).select_from(SealRequest))
    body = b'{"key": {"hosted": true, "algorithm": "ECDSA-P256"}, "profile": "eseal", ' \
           b'"profile": "eseal"}'
    code, headers, raw = _request(env.url + "/api/v1/seal-requests", "POST", body,
                                  "application/json", env.school)
    assert "duplicate member name 'profile'" in _problem(code, headers, raw, 400)["detail"]
    with env.store.session() as s:
        assert s.scalar(select(func.count()).select_from(SealRequest)) == before


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_sealing_endpoints_refuse_bad_json_with_400(sealer: Env, name: str) -> None:
    for path in ("/api/v1/seal/json?level=B-B", "/api/v1/seal/json/batch?level=B-B"):
        code, headers, raw = _request(sealer.url + path, "POST", BAD_BODIES[name],
                                      "application/json", sealer.school)
        body = _problem(code, headers, raw, 400)
        assert body["type"] == "urn:kakuin:problem:api/bad-json", body


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_csc_refuses_bad_json_with_its_own_400(sealer: Env, name: str, version: str) -> None:
    for path, token in ((f"/csc/{version}/info", None),  # unauthenticated
                        (f"/csc/{version}/credentials/list", sealer.school),
                        (f"/csc/{version}/signatures/signHash", sealer.school)):
        code, _, raw = _request(sealer.url + path, "POST", BAD_BODIES[name],
                                "application/json", token)
        assert code == 400, (path, code, raw[:300])
        assert json.loads(raw)["error"] == "invalid_request", raw


# -- ids and numbers out of every column's range ----------------------------------------------

HUGE = [str(2**31), str(2**63), str(2**64), str(10**30), "9" * 5000]


def test_huge_ids_in_paths_are_404(env: Env) -> None:
    for value in HUGE:
        for path in (f"/api/v1/organizations/{value}",
                     f"/api/v1/organizations/{value}/certificates",
                     f"/api/v1/seal-requests/{value}",
                     f"/api/v1/certificates/{value}"):
            code, headers, raw = _request(env.url + path, token=env.operator)
            _problem(code, headers, raw)
            assert code in (404, 422), (path, code)
        for path in (f"/api/v1/seal-requests/{value}/approve",
                     f"/api/v1/seal-requests/{value}/reject",
                     f"/api/v1/certificates/{value}/revoke",
                     f"/api/v1/certificates/{value}/unsuspend"):
            code, headers, raw = _request(env.url + path, "POST", b'{"reason": "superseded"}',
                                          "application/json", env.operator)
            _problem(code, headers, raw)
            assert code in (404, 422), (path, code)


@pytest.mark.parametrize("value", [*HUGE, "-1", "0", "1.5", "true", '"3"', "[]", "{}", "null"])
def test_huge_or_mistyped_ids_in_bodies_are_4xx(env: Env, value: str) -> None:
    bodies = [
        f'{{"organization_id": {value}, "key": {{"hosted": true}}}}',
        f'{{"kind": "school", "board_id": {value}, "name_ja": "x", "school_code": "C1"}}',
    ]
    for body, path in zip(bodies, ("/api/v1/seal-requests", "/api/v1/organizations"),
                          strict=True):
        code, headers, raw = _request(env.url + path, "POST", body.encode(),
                                      "application/json", env.operator)
        _problem(code, headers, raw)


@pytest.mark.parametrize("body", [
    {"kind": ["school"]}, {"kind": "school", "name_ja": 5, "school_code": "C1"},
    {"kind": "board", "name_ja": "x" * 10_000, "local_gov_code": "131041"},
    {"kind": "school", "name_ja": "a\u0000b", "school_code": "C113210000099"},
    {"kind": "school", "name_ja": "名前", "school_code": "C11321\u00000000"},
    {"key": {"hosted": True, "algorithm": 5}}, {"key": "hosted"}, {"csr": 5},
    {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"},
    {"csr": "%%%"}, {"key": {"hosted": True}, "replaces_serial": "zz\u0000"},
    {"key": {"hosted": True}, "profile": "\u0000"}, [], "text", 5, None,
])
def test_wrong_types_everywhere_are_4xx(env: Env, body: Any) -> None:
    raw_body = json.dumps(body).encode()
    for path in ("/api/v1/organizations", "/api/v1/seal-requests"):
        code, headers, raw = _request(env.url + path, "POST", raw_body, "application/json",
                                      env.officer_a)
        _problem(code, headers, raw)


def test_hostile_seal_request_ids(env: Env) -> None:
    for value in ("x" * 5000, "%00", "..%2f..%2fetc", "%ff%fe", quote("' OR 1=1 --"),
                  str(uuid.uuid4()).upper()):
        for method, suffix in (("GET", ""), ("POST", "/approve"), ("POST", "/reject")):
            code, headers, raw = _request(f"{env.url}/api/v1/seal-requests/{value}{suffix}",
                                          method, b"{}" if method == "POST" else None,
                                          "application/json", env.operator)
            _problem(code, headers, raw)


def test_revoke_with_hostile_bodies(sealer: Env) -> None:
    serial = "1" * 40
    for body in (b'{"reason": 5}', b'{"reason": "keyCompromise", "invalidity_date": 5}',
                 b'{"reason": "keyCompromise", "invalidity_date": "9999-99-99"}',
                 b'{"reason": "keyCompromise", "invalidity_date": "\\u0000"}', b"[]",
                 b'{"reason": "' + b"x" * 100_000 + b'"}', DEEP):
        code, headers, raw = _request(f"{sealer.url}/api/v1/certificates/{serial}/revoke",
                                      "POST", body, "application/json", sealer.operator)
        _problem(code, headers, raw)


# -- sealing PDFs: hostile options and documents ----------------------------------------------


def _seal_pdf(env: Env, fields: dict[str, str], file: bytes | None,
              ) -> tuple[int, dict[str, str], bytes]:
    body, ctype = _multipart({"level": "B-B", **fields}, file)
    return _request(f"{env.url}/api/v1/seal/pdf", "POST", body, ctype, env.school)


@pytest.mark.parametrize("fields", [
    {"box": "0,0,0.0001,0.0001"}, {"box": "0,0,1e-300,1e-300"}, {"box": "0,0,1e308,1e308"},
    {"box": "nan,0,100,100"}, {"box": "0,0,inf,100"}, {"box": "-1e9,-1e9,-1e9,1e9"},
    {"box": "1,2,3"}, {"box": "0,0,100,100," * 1000}, {"box": ""},
    {"page": str(10**30)}, {"page": str(-(10**30))}, {"page": "2"}, {"page": "-5"},
    {"page": "1e3"}, {"page": "\u0661"}, {"page": ""},
    {"field": "f" * 100_000}, {"field": "a\u0000b"}, {"field": "a\nb"},
    {"reason": "r" * 100_000}, {"location": "l" * 100_000}, {"reason": "\u0000"},
    {"visible": "maybe"}, {"level": "B-" + "X" * 10_000},
    {"organization_id": str(10**30)}, {"organization_id": str(2**63)},
    {"organization_id": "-1"}, {"organization_id": "x"},
])
def test_hostile_seal_options_are_4xx_and_nothing_signed(sealer: Env, fields: dict[str, str],
                                                         ) -> None:
    before = _audit_count(sealer)
    code, headers, raw = _seal_pdf(sealer, fields, minimal_pdf())
    _problem(code, headers, raw)
    with sealer.store.session() as s:
        actions = s.scalars(select(AuditEntry.action).where(AuditEntry.seq > before)).all()
    assert "seal.pdf" not in actions


def _reference_loop_pdf() -> bytes:
    """/Pages whose /Kids contains itself, and a page whose /Parent is itself."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 2 >>",
        b"<< /Type /Page /Parent 3 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /XObject << /X 5 0 R >> >> >>",
        b"<< /Length 5 0 R >>\nstream\nq Q\nendstream",
        b"<< /Type /XObject /Subtype /Form /BBox [0 0 1 1] /Resources << /XObject "
        b"<< /Y 5 0 R >> >> /Length 0 >>\nstream\n\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            .encode())
    return bytes(out)


def _corrupted_dss(env: Env) -> bytes:
    """A B-LT seal with one byte flipped inside the first OCSP response of its DSS."""
    code, _, sealed = _seal_pdf(env, {"level": "B-LT"}, guidance_record(pages=1))
    assert code == 200, sealed[:300]
    ref = re.search(rb"/OCSPs\s*\[\s*(\d+) 0 R", sealed)
    assert ref is not None
    obj = sealed.rfind(b"\n" + ref.group(1) + b" 0 obj")
    pos = sealed.index(b"stream", obj) + 40
    return sealed[:pos] + bytes([sealed[pos] ^ 0x01]) + sealed[pos + 1:]


@pytest.mark.parametrize("kind", [
    "not-pdf", "empty", "encrypted", "reference-loop", "truncated", "pdf-header-only",
    "garbage-xref", "corrupted-dss",
])
def test_hostile_documents_are_4xx(sealer: Env, kind: str) -> None:
    good = minimal_pdf()
    documents = {
        "not-pdf": lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
        "empty": lambda: b"",
        "encrypted": lambda: encrypted_pdf(),
        "reference-loop": _reference_loop_pdf,
        "truncated": lambda: good[: len(good) // 2],
        "pdf-header-only": lambda: b"%PDF-1.7\n",
        "garbage-xref": lambda: re.sub(rb"startxref\s+\d+", b"startxref\n999999999", good),
        "corrupted-dss": lambda: _corrupted_dss(sealer),
    }
    document = documents[kind]()
    for level in ("B-B", "B-LTA"):
        code, headers, raw = _seal_pdf(sealer, {"level": level}, document)
        if kind == "corrupted-dss" and code == 200:
            continue  # the seal covers the bytes as they are; a damaged DSS is not ours
        _problem(code, headers, raw)
    code, headers, raw = _seal_pdf(sealer, {}, None)
    _problem(code, headers, raw)


def test_verify_rejects_hostile_uploads_without_500(sealer: Env) -> None:
    for document in (_reference_loop_pdf(), DEEP, DEEP_OBJ, b'{"protected": 1, "protected": 2}'):
        code, _, raw = _request(f"{sealer.url}/api/v1/verify", "POST", document,
                                "application/octet-stream")
        assert code < 500, (code, raw[:300])


def test_json_seal_hostile_parameters(sealer: Env) -> None:
    record = b'{"a": 1}'
    for query in ("level=B-" + "Q" * 5000, "detached=maybe", "detached=true&name=" + "n" * 10_000,
                  "detached=true&name=%00", "organization_id=" + "9" * 40):
        code, headers, raw = _request(f"{sealer.url}/api/v1/seal/json?{query}", "POST", record,
                                      "application/json", sealer.school)
        _problem(code, headers, raw)
    for body in (b'{"records": 5}', b'{"records": [1, 2]}', b'{"records": []}', b"[]",
                 b'{"records": [' + b"{}," * 2000 + b"{}]}"):
        code, headers, raw = _request(f"{sealer.url}/api/v1/seal/json/batch?level=B-B", "POST",
                                      body, "application/json", sealer.school)
        _problem(code, headers, raw)


# -- protocols answer in their own terms ------------------------------------------------------


def test_ocsp_and_tsa_answer_hostile_input_in_protocol_terms(env: Env) -> None:
    for body in (b"", b"\x30\x80" * 5000, b"\x30" + b"\x84\xff\xff\xff\xff", DEEP):
        code, headers, raw = _request(f"{env.url}/ocsp", "POST", body,
                                      "application/ocsp-request")
        assert code == 200 and headers["Content-Type"] == "application/ocsp-response", code
        assert raw[:5] in (b"0\x03\n\x01\x01", b"0\x03\n\x01\x02")  # malformed / internalError
        code, headers, raw = _request(f"{env.url}/tsa", "POST", body,
                                      "application/timestamp-query")
        assert code == 200 and headers["Content-Type"] == "application/timestamp-reply", code
    for path in ("/ocsp/" + "A" * 10_000, "/ocsp/%00", "/ocsp/" + "%ff" * 10):
        code, _, _ = _request(env.url + path)
        assert code < 500


# -- CSC: every field of every method, wrong types and sizes ----------------------------------

CSC_HOSTILE = [None, True, 10**30, -1, 1.5, "x" * 100_000, [], {}, ["%%%"], [""] * 1000,
               "\u0000", "\ud800", [10**30], {"a": [1]}]


def test_csc_fields_with_wrong_types_and_sizes(sealer: Env) -> None:
    import base64
    import hashlib

    code, _, raw = _request(f"{sealer.url}/csc/v2/credentials/list", "POST", b"{}",
                            "application/json", sealer.school)
    assert code == 200, raw
    cred = json.loads(raw)["credentialIDs"][0]
    digest = base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    bases = {
        "credentials/list": {"credentialInfo": True, "certificates": "chain", "certInfo": True},
        "credentials/info": {"credentialID": cred, "certificates": "chain", "certInfo": True},
        "credentials/authorize": {"credentialID": cred, "numSignatures": 1, "hashes": [digest],
                                  "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1"},
        "signatures/signHash": {"credentialID": cred, "SAD": "x", "hashes": [digest],
                                "signAlgo": "1.2.840.10045.4.3.2",
                                "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
                                "signAlgoParams": "", "operationMode": "S"},
    }
    for version in ("v1", "v2"):
        for method, base in bases.items():
            for name in [*base, "hash", "hashAlgo"]:
                for value in CSC_HOSTILE:
                    body = json.dumps({**base, name: value}).encode("utf-8", "surrogatepass")
                    code, _, raw = _request(f"{sealer.url}/csc/{version}/{method}", "POST",
                                            body, "application/json", sealer.school)
                    assert code < 500, (version, method, name, str(value)[:40], raw[:300])
                    if code != 200:
                        assert set(json.loads(raw)) == {"error", "error_description"}, raw


def test_hostile_headers(sealer: Env) -> None:
    """Authorization, Accept, X-Request-ID and Content-Type as an attacker writes them."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(sealer.url)
    auths = [b"Bearer", b"Bearer ", b"Basic Zm9vOmJhcg==", b"Bearer \xe9\xff", b"Bearer " +
             b"A" * 8000, b"bearer " + sealer.school.encode(), b"Bearer a b c", b"\x7f"]
    paths = ["/api/v1/seal-requests", "/api/v1/organizations/1", "/csc/v2/credentials/list",
             "/api/v1/seal/json", f"/api/v1/certificates/{'1' * 40}"]
    for auth in auths:
        for path in paths:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            conn.putrequest("POST" if "organizations/" not in path else "GET", path)
            conn.putheader("Authorization", auth)
            conn.putheader("Accept", b"application/pkix-cert;q=\xff, */*;q=nan")
            conn.putheader("X-Request-ID", b"\xff" * 100)
            conn.putheader("Content-Type", b"application/json; charset=\xe9")
            conn.putheader("Content-Length", "2")
            conn.endheaders(b"{}")
            response = conn.getresponse()
            response.read()
            conn.close()
            assert response.status < 500, (auth[:20], path, response.status)


def _with_empty_field(rect: bytes) -> bytes:
    """A PDF with an empty signature field "Tiny" whose /Rect is ``rect`` (11 bytes, patched
    in place so the cross-reference offsets stay right: pyHanko itself refuses such boxes)."""
    import io

    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields

    out = io.BytesIO()
    writer = IncrementalPdfFileWriter(io.BytesIO(minimal_pdf()))
    fields.append_signature_field(writer, fields.SigFieldSpec("Tiny", on_page=0,
                                                              box=(0, 0, 99999, 99999)))
    writer.write(out)
    assert len(rect) == 11
    return out.getvalue().replace(b"/Rect [ 0 0 99999 99999 ]", b"/Rect [ 0 0 " + rect + b" ]")


@pytest.mark.parametrize("rect", [b".0001 .0001", b"0     0    ", b"0.5   400  ", b"1e9   1e9  ",
                                  b"99999 99999", b"-1    -1   ", b"nan   nan  "])
def test_hostile_existing_signature_field_is_4xx(sealer: Env, rect: bytes) -> None:
    """The document's own empty field decides where the stamp goes: its size is hostile too."""
    before = _audit_count(sealer)
    code, headers, raw = _seal_pdf(sealer, {"field": "Tiny"}, _with_empty_field(rect))
    if code != 200:
        _problem(code, headers, raw)
        with sealer.store.session() as s:
            actions = s.scalars(select(AuditEntry.action).where(AuditEntry.seq > before)).all()
        assert "seal.pdf" not in actions


@pytest.mark.parametrize("box", [b"[0 0 0.0 0.0]", b"[0 0 -95 -42]", b"[0 0 1e9 1e9]",
                                 b"[0 0 abc def]", b"[0 0 595]   ", b"[0 0 595 8e9]",
                                 b"(not a box) ", b"[[[[[[]]]]]] "])
def test_hostile_media_box_is_4xx(sealer: Env, box: bytes) -> None:
    """The page geometry decides where the default stamp goes: hostile values are refused."""
    document = minimal_pdf().replace(b"/MediaBox [0 0 595 842]", b"/MediaBox " + box[:13])
    for fields in ({}, {"page": "-1"}, {"box": "10,10,100,100"}):
        code, headers, raw = _seal_pdf(sealer, fields, document)
        if code != 200:
            _problem(code, headers, raw)
