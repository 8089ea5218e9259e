"""Sealing over real HTTP: /tsa, /api/v1/seal/pdf, /api/v1/seal/json(/batch)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from ca import audit, clients
from ca.models import Organization
from tests.cafixtures import Env, _validate
from tests.fixtures_pdf import encrypted_pdf, guidance_record


def _post(url: str, body: bytes, content_type: str, token: str | None = None,
          ) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _multipart(fields: dict[str, str], file: bytes, filename: str = "record.pdf",
               ) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                 + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_tsa_over_http_verifies_with_openssl(sealer: Env, tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes("指導要録".encode() * 100)
    query = tmp_path / "q.tsq"
    subprocess.run(["openssl", "ts", "-query", "-data", data, "-sha256", "-cert", "-out", query],
                   check=True, capture_output=True)
    code, headers, body = _post(f"{sealer.url}/tsa", query.read_bytes(),
                                "application/timestamp-query")
    assert code == 200 and headers["Content-Type"] == "application/timestamp-reply"
    assert "X-Request-ID" not in headers  # answered by the fast path below Flask
    reply = tmp_path / "r.tsr"
    reply.write_bytes(body)
    pki = sealer.home / "pki"
    untrusted = tmp_path / "untrusted.pem"
    untrusted.write_bytes((pki / "kakuin-issuing-ca.pem").read_bytes()
                          + (pki / "kakuin-issuing-ca-tsa.pem").read_bytes())
    out = subprocess.run(["openssl", "ts", "-verify", "-queryfile", query, "-in", reply,
                          "-CAfile", pki / "kakuin-root-ca.pem", "-untrusted", untrusted],
                         capture_output=True, text=True, check=False)
    assert "Verification: OK" in out.stdout, out.stdout + out.stderr

    code, _, body = _post(f"{sealer.url}/tsa", b"garbage", "application/timestamp-query")
    assert code == 200
    reply.write_bytes(body)
    text = subprocess.run(["openssl", "ts", "-reply", "-in", reply, "-text"],
                          capture_output=True, text=True, check=False).stdout
    assert "Rejected" in text and "data submitted has the wrong format" in text


@pytest.mark.parametrize("level", ["B-B", "B-T"])
def test_seal_pdf_over_http(sealer: Env, level: str) -> None:
    document = guidance_record(pages=3)
    body, ctype = _multipart({"level": level}, document)
    code, headers, sealed = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 200, sealed[:500]
    assert headers["Content-Type"] == "application/pdf"
    assert headers["X-Kakuin-Input-SHA256"] == hashlib.sha256(document).hexdigest()
    assert headers["X-Kakuin-Output-SHA256"] == hashlib.sha256(sealed).hexdigest()
    result = _validate(sealed, sealer)
    assert result.intact and result.valid and result.trusted
    if level == "B-T":
        assert result.timestamp_validity is not None and result.timestamp_validity.intact
    with sealer.store.session() as s:
        entries = [e for e in audit.entries(s, limit=1000) if e.action == "seal.pdf"]
    assert entries[-1].digest == hashlib.sha256(document).hexdigest()
    assert entries[-1].organization_id == sealer.school_id
    assert "新宿" not in (entries[-1].details or "")  # digests, not content


def test_seal_pdf_refusals(sealer: Env) -> None:
    body, ctype = _multipart({"level": "B-B"}, b"not a pdf at all")
    code, headers, raw = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 422 and headers["Content-Type"] == "application/problem+json", raw
    assert json.loads(raw)["type"] == "urn:kakuin:problem:signing/bad-document"

    body, ctype = _multipart({"level": "B-B"}, encrypted_pdf())
    code, _, raw = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 422 and "encrypt" in json.loads(raw)["detail"].lower()

    body, ctype = _multipart({"level": "B-X"}, guidance_record(pages=1))
    code, _, raw = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, sealer.school)
    assert code == 400 and json.loads(raw)["type"] == "urn:kakuin:problem:signing/error"

    # The board's officer and the operator cannot seal in the school's name.
    with sealer.store.session() as s:
        op = s.scalars(select(Organization).where(Organization.kind == "operator")).one()
        _, operator = clients.create_client(s, organization_id=op.id, role="ca-operator",
                                            name="op2", actor="test")
    for token in (sealer.officer_a, operator):
        body, ctype = _multipart({"level": "B-B", "organization_id": str(sealer.school_id)},
                                 guidance_record(pages=1))
        code, _, raw = _post(f"{sealer.url}/api/v1/seal/pdf", body, ctype, token)
        assert code == 403, raw


def test_seal_json_single_and_batch(sealer: Env) -> None:
    record = json.dumps({"種別": "指導要録", "学年": 3, "氏名": "山田 花子"},
                        ensure_ascii=False).encode()
    code, _, raw = _post(f"{sealer.url}/api/v1/seal/json?level=B-T", record,
                         "application/json", sealer.school)
    assert code == 200, raw
    jws = json.loads(raw)
    assert {"protected", "payload", "signature"} <= set(jws)
    assert jws["header"]["etsiU"]

    batch = json.dumps({"records": [{"n": i, "名前": f"生徒{i}"} for i in range(25)]},
                       ensure_ascii=False).encode()
    code, _, raw = _post(f"{sealer.url}/api/v1/seal/json/batch?level=B-B", batch,
                         "application/json", sealer.school)
    assert code == 200, raw
    seals = json.loads(raw)["seals"]
    assert len(seals) == 25 and len({s["signature"] for s in seals}) == 25

    for bad in (b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": "\xff"}', b"[1, 2"):
        code, headers, raw = _post(f"{sealer.url}/api/v1/seal/json?level=B-B", bad,
                                   "application/json", sealer.school)
        # One strict JSON reader for the whole API: not acceptable JSON is a 400.
        assert code == 400 and headers["Content-Type"] == "application/problem+json", raw
        assert json.loads(raw)["type"] == "urn:kakuin:problem:api/bad-json"

    with sealer.store.session() as s:
        entries = [e for e in audit.entries(s, limit=1000) if e.action == "seal.json"]
    assert entries and "山田" not in (entries[-1].details or "")
    assert "花子" not in (entries[-2].details or "")
