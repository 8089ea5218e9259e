"""Conformance test vectors for vendors (issue 14): ``kakuin conformance vectors DIR``.

Why: vendors' verifiers "built to spec" often are not; a corpus with the expected ETSI EN 319
102-1 verdict per file lets them prove it. The corpus comes from a throwaway CA: its own home
(``DIR/ca``: ceremony, SoftHSM token, SQLite) served by a real ``kakuin serve`` on loopback
while the vectors are sealed over HTTP, then stopped.

Layout::

    DIR/manifest.json      {"schema": "kakuin-conformance-vectors/1", "ca_base_url", "serve",
                            "trust_list", "trust_anchor", "vectors": [VECTOR, ...]}
    DIR/trust-list.jws     the throwaway instance's signed trust list (import it, pin = its
                           "trust_list_signer_sha256")
    DIR/trust-anchor.crt   its root CA certificate (DER), for tools without trust lists
    DIR/vectors/NAME       the files; NAME = <format>-<pass|fail>-<case>.<pdf|json>
    DIR/ca/                the throwaway CA's home
    VECTOR = {"file", "format": "pades"|"jades", "level", "expected": {"indication",
              "sub_indication"}, "description"}

Revocation of B-B/B-T vectors is online (OCSP/CRL at ``ca_base_url``): before verifying, run
the manifest's ``serve`` command (``kakuin --home DIR/ca serve`` on the same port); B-LT and
B-LTA vectors carry their own revocation data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

SCHEMA = "kakuin-conformance-vectors/1"
PASSED, FAILED, INDET = "TOTAL-PASSED", "TOTAL-FAILED", "INDETERMINATE"
_SCRUB = ("SOFTHSM2_CONF", "KAKUIN_HOME", "KAKUIN_HSM_PIN", "KAKUIN_DATABASE_URL",
          "KAKUIN_BASE_URL", "KAKUIN_PORT", "KAKUIN_HOST", "KAKUIN_REGION", "KAKUIN_WORKERS")
MISSING = (
    "JAdES detached", "incremental updates that replace or annotate "
    "page content (overlay only)", "signature wrapping", "look-alike chain with the real names",
    "expired without POE", "not yet valid",
    "not an e-seal (no QcType)", "wrong key usage", "missing revocation data",
    "broken or foreign timestamp",
)


@dataclass(frozen=True)
class Vector:
    file: str
    format: str
    level: str | None
    indication: str
    sub_indication: str | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "level": self.level,
                "expected": {"indication": self.indication,
                             "sub_indication": self.sub_indication},
                "description": self.description}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Instance:
    """The throwaway CA: ``kakuin --home H`` as subprocesses, reached over loopback HTTP."""

    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(KAKUIN_BASE_URL=self.url, KAKUIN_PORT=str(self.port),
                   KAKUIN_HOST="127.0.0.1", KAKUIN_WORKERS="1", PYTHONUNBUFFERED="1")
        return env

    def cli(self, *args: str) -> Any:
        proc = subprocess.run([sys.executable, "-m", "kakuin", "--home", str(self.home), *args],
                              env=self.env(), capture_output=True, text=True, timeout=600,
                              check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kakuin {' '.join(args)}: {proc.stderr[-2000:]}")
        out = proc.stdout
        return json.loads(out[out.index("{"):]) if "{" in out else out

    @contextmanager
    def serving(self) -> Iterator[None]:
        log = (self.home.parent / "ca-serve.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kakuin", "--home", str(self.home), "serve"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"kakuin serve did not come up (see {log.name})")
                try:
                    if self.call("GET", "/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.3)
            yield
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            log.close()

    def call(self, method: str, path: str, *, token: str | None = None,
             body: bytes | None = None, ctype: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": ctype} if ctype else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method,  # noqa: S310
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 (loopback)
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ok(self, method: str, path: str, token: str | None = None, payload: Any = None, *,
           body: bytes | None = None, ctype: str | None = None) -> bytes:
        if payload is not None:
            body, ctype = json.dumps(payload, ensure_ascii=False).encode(), "application/json"
        code, data = self.call(method, path, token=token, body=body, ctype=ctype)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {code}: {data[:400]!r}")
        return data


def _multipart(fields: dict[str, str], pdf: bytes) -> tuple[bytes, str]:
    boundary = "kakuin-" + secrets.token_hex(8)
    out = bytearray()
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="r.pdf"'
            "\r\nContent-Type: application/pdf\r\n\r\n").encode() + pdf + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _school(ca: _Instance, officer: str, name: str, code: str) -> str:
    """A confirmed school with a hosted P-256 e-seal; returns its system token."""
    school = json.loads(ca.ok("POST", "/api/v1/organizations", officer,
                              {"kind": "school", "name_ja": name, "school_code": code}))
    ca.cli("org", "confirm", str(school["id"]))
    token = str(ca.cli("token", "create", "--org", str(school["id"]), "--role",
                       "school-system", "--name", "sys")["token"])
    req = json.loads(ca.ok("POST", "/api/v1/seal-requests", token,
                           {"key": {"hosted": True, "algorithm": "ECDSA-P256"}}))
    ca.ok("POST", f"/api/v1/seal-requests/{req['id']}/approve", officer, {})
    return token


def _document(text: str) -> bytes:
    """A one-page PDF whose content stream is plain (so byte edits land in page content)."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter

    writer = PdfFileWriter(stream_xrefs=False)
    font = writer.add_object(generic.DictionaryObject({
        generic.pdf_name("/Type"): generic.pdf_name("/Font"),
        generic.pdf_name("/Subtype"): generic.pdf_name("/Type1"),
        generic.pdf_name("/BaseFont"): generic.pdf_name("/Helvetica")}))
    content = writer.add_object(generic.StreamObject(
        stream_data=f"BT /F1 14 Tf 72 760 Td ({text}) Tj ET".encode()))
    page = PageObject(content, (0, 0, 595, 842), resources=generic.DictionaryObject({
        generic.pdf_name("/Font"): generic.DictionaryObject({generic.pdf_name("/F1"): font})}))
    writer.insert_page(page)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _overlay(sealed: bytes) -> bytes:
    """An incremental update after the seal that adds a content stream drawn over page 1."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(BytesIO(sealed))
    page_ref = writer.root["/Pages"]["/Kids"][0]
    page = page_ref.get_object()
    extra = writer.add_object(generic.StreamObject(
        stream_data=b"q 1 1 1 rg 60 740 400 40 re f Q BT /F1 14 Tf 72 760 Td (PASSED) Tj ET"))
    contents = page["/Contents"]
    old = list(contents) if isinstance(contents, generic.ArrayObject) else [page.raw_get(
        "/Contents")]
    page["/Contents"] = generic.ArrayObject([*old, extra])
    writer.update_container(page)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def _flip_content(sealed: bytes, needle: bytes) -> bytes:
    at = sealed.index(needle)
    return sealed[:at] + bytes([sealed[at] ^ 0x01]) + sealed[at + 1:]


def _rewrite_byterange(sealed: bytes) -> bytes:
    """/ByteRange shifted so the hashed ranges skip the first bytes of the file (same length)."""
    match = re.search(rb"/ByteRange\s*\[\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\]", sealed)
    if match is None:
        raise RuntimeError("no /ByteRange")
    a, b, c, d = (int(x) for x in match.groups())
    new = f"/ByteRange [{a + 10} {b - 10} {c} {d}]".encode()
    old = match.group(0)
    new = new.ljust(len(old))
    return sealed[:match.start()] + new + sealed[match.end():]


def _foreign_chain_seal(pdf: bytes) -> bytes:
    """Sealed by plain pyHanko with a self-made root and a leaf bearing the school's name:
    a complete chain, to an anchor on no trust list."""
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    def name(cn: str, org_id: str | None = None) -> x509.Name:
        extra = [x509.NameAttribute(x509.ObjectIdentifier("2.5.4.97"), org_id)] if org_id else []
        return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, cn), *extra,
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.now(UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    root = (x509.CertificateBuilder().subject_name(name("kakuin Root CA"))
            .issuer_name(name("kakuin Root CA")).public_key(root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(name("新宿区立第一中学校", "SC:JP-C113210000010"))
            .issuer_name(root.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False,
                                         False), critical=True)
            .sign(root_key, hashes.SHA256()))

    def der(cert: x509.Certificate) -> asn1_x509.Certificate:
        return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))

    pkey = asn1_keys.PrivateKeyInfo.load(key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    signer = signers.SimpleSigner(der(leaf), pkey, SimpleCertificateStore.from_certs([der(root)]))
    out = signers.PdfSigner(
        signers.PdfSignatureMetadata(field_name="Seal", subfilter=fields.SigSeedSubFilter.PADES),
        signer=signer).sign_pdf(IncrementalPdfFileWriter(BytesIO(pdf)), output=BytesIO())
    return bytes(out.getvalue())


def _jws_alg_none(jws: dict[str, Any]) -> dict[str, Any]:
    header = json.loads(base64.urlsafe_b64decode(jws["protected"] + "=" * (-len(
        jws["protected"]) % 4)))
    header["alg"] = "none"
    protected = base64.urlsafe_b64encode(json.dumps(header, separators=(",", ":")).encode()
                                         ).rstrip(b"=").decode()
    return {**{k: v for k, v in jws.items() if k != "signature"}, "protected": protected,
            "signature": ""}


def _jws_field_changed(jws: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=" * (-len(
        jws["payload"]) % 4)))
    payload["評定"] = 5 if payload.get("評定") != 5 else 4
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return {**jws, "payload": base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()}


RECORD = {"種別": "指導要録", "学年": 3, "氏名": "山田 花子", "評定": 4}


def generate(directory: Path, *, port: int | None = None) -> dict[str, Any]:
    """Make the corpus under ``directory`` (must be empty or absent); returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty")
    vectors_dir = directory / "vectors"
    vectors_dir.mkdir()
    ca = _Instance(directory / "ca", port or free_port())
    ca.home.mkdir()
    ca.cli("init")
    ca.cli("org", "add", "--kind", "operator", "--name-ja", "運用者")
    board = ca.cli("org", "add", "--kind", "board", "--name-ja", "新宿区教育委員会",
                   "--local-gov-code", "131041")
    officer = str(ca.cli("token", "create", "--org", str(board["id"]), "--role",
                         "board-officer", "--name", "officer")["token"])
    out: list[Vector] = []

    def put(name: str, data: bytes, fmt: str, level: str | None, ind: str, sub: str | None,
            why: str) -> None:
        (vectors_dir / name).write_bytes(data)
        out.append(Vector(name, fmt, level, ind, sub, why))

    base_pdf = _document("Shido Yoroku 2026 - Yamada Hanako - grade 3")
    with ca.serving():
        school = _school(ca, officer, "新宿区立第一中学校", "C113210000010")
        doomed = _school(ca, officer, "新宿区立第二中学校", "C113210000020")
        sealed: dict[str, bytes] = {}
        for level in ("B-B", "B-T", "B-LT", "B-LTA"):
            for visible in (True, False):
                body, ctype = _multipart({"level": level, "visible": str(visible).lower()},
                                         base_pdf)
                pdf = ca.ok("POST", "/api/v1/seal/pdf", school, body=body, ctype=ctype)
                sealed[f"{level}-{visible}"] = pdf
                tag = "visible" if visible else "invisible"
                put(f"pades-pass-{level.lower()}-{tag}.pdf", pdf, "pades", level, PASSED, None,
                    f"PAdES {level}, {tag} seal: valid")
        jws = {}
        for level in ("B-B", "B-T"):
            raw = ca.ok("POST", f"/api/v1/seal/json?level={level}", school,
                        body=json.dumps(RECORD, ensure_ascii=False).encode(),
                        ctype="application/json")
            jws[level] = json.loads(raw)
            put(f"jades-pass-{level.lower()}.json", raw, "jades", level, PASSED, None,
                f"JAdES {level} attached: valid")
        raw = ca.ok("POST", "/api/v1/seal/json?level=B-LT", school,
                    body=json.dumps(RECORD, ensure_ascii=False).encode(),
                    ctype="application/json")
        put("jades-pass-b-lt.json", raw, "jades", "B-LT", PASSED, None,
            "JAdES B-LT attached: valid with the embedded revocation data")
        batch = json.loads(ca.ok("POST", "/api/v1/seal/json/batch?level=B-T", school, {
            "records": [RECORD, {**RECORD, "氏名": "佐藤 次郎"}]}))["seals"]
        put("jades-pass-batch-record.json", json.dumps(batch[1], ensure_ascii=False).encode(),
            "jades", "B-T", PASSED, None, "the second record of a batch seal request: valid")
        # A second school: a B-T seal, then (after its timestamp) a key compromise dated
        # later than that timestamp, then a B-B seal after the invalidity date.
        body, ctype = _multipart({"level": "B-T"}, base_pdf)
        before = ca.ok("POST", "/api/v1/seal/pdf", doomed, body=body, ctype=ctype)
        time.sleep(1.1)
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        time.sleep(1.1)
        body, ctype = _multipart({"level": "B-B"}, base_pdf)
        revoked = ca.ok("POST", "/api/v1/seal/pdf", doomed, body=body, ctype=ctype)
        ca.ok("POST", f"/api/v1/certificates/{_signer_serial(revoked)}/revoke", officer,
              {"reason": "keyCompromise", "invalidity_date": when})
        put("pades-fail-revoked-before-seal.pdf", revoked, "pades", "B-B", INDET,
            "REVOKED_NO_POE", "B-B seal whose certificate is revoked (key compromise, "
            "invalidity date before the seal); no POE before the revocation")
        put("pades-pass-revoked-after-timestamp.pdf", before, "pades", "B-T", PASSED, None,
            "B-T seal whose timestamp predates the key compromise: still valid")
        # A third school's certificate is suspended (certificateHold) after it sealed.
        held = _school(ca, officer, "新宿区立第三中学校", "C113210000030")
        body, ctype = _multipart({"level": "B-B"}, base_pdf)
        suspended = ca.ok("POST", "/api/v1/seal/pdf", held, body=body, ctype=ctype)
        ca.ok("POST", f"/api/v1/certificates/{_signer_serial(suspended)}/revoke", officer,
              {"reason": "certificateHold"})
        put("pades-fail-suspended.pdf", suspended, "pades", "B-B", INDET, "REVOKED_NO_POE",
            "B-B seal whose certificate is suspended (certificateHold) after sealing, no POE: "
            "kakuin reads a hold as a revocation (EN 319 102-1 REVOKED_NO_POE); some "
            "validators answer TRY_LATER; never a pass either way")
        (directory / "trust-list.jws").write_bytes(ca.ok("GET", "/trust-list"))
    bb = sealed["B-B-True"]
    put("pades-fail-byte-flip.pdf", _flip_content(bb, b"Hanako"), "pades", "B-B", FAILED,
        "HASH_FAILURE", "one byte of the page content flipped inside the signed range")
    put("pades-fail-incremental-overlay.pdf", _overlay(bb), "pades", "B-B", FAILED,
        "FORMAT_FAILURE", "incremental update after the seal drawing over page 1's content "
        "(a modification the seal does not allow; the signed revision itself is intact)")
    put("pades-fail-byterange-rewritten.pdf", _rewrite_byterange(bb), "pades", "B-B", FAILED,
        "HASH_FAILURE", "/ByteRange rewritten (same length) so it no longer covers the file")
    put("pades-fail-unknown-anchor.pdf", _foreign_chain_seal(base_pdf), "pades", "B-B", INDET,
        "NO_CERTIFICATE_CHAIN_FOUND", "sealed by plain pyHanko: self-made root and a leaf "
        "with the school's name and organizationIdentifier; no path to a listed anchor")
    put("jades-fail-field-changed.json",
        json.dumps(_jws_field_changed(jws["B-B"]), ensure_ascii=False).encode(), "jades",
        "B-B", FAILED, "SIG_CRYPTO_FAILURE", "a field of the sealed record changed (評定); the "
        "payload is in the JWS signing input, so the signature no longer verifies")
    put("jades-fail-alg-none.json", json.dumps(_jws_alg_none(jws["B-B"])).encode(), "jades",
        "B-B", FAILED, "FORMAT_FAILURE", "protected header alg set to none, signature removed")
    anchor = _root_der(directory / "trust-list.jws")
    (directory / "trust-anchor.crt").write_bytes(anchor)
    manifest = {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ca_base_url": ca.url,
        "serve": f"KAKUIN_PORT={ca.port} KAKUIN_HOST=127.0.0.1 KAKUIN_BASE_URL={ca.url} "
                 f"kakuin --home {ca.home} serve",
        "trust_list": "trust-list.jws",
        "trust_list_signer_sha256": _signer_sha256(directory / "trust-list.jws"),
        "trust_anchor": "trust-anchor.crt",
        "not_yet_covered": list(MISSING),
        "vectors": [v.to_dict() for v in sorted(out, key=lambda v: v.file)],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2)
                                             + "\n")
    return manifest


def _signer_serial(pdf: bytes) -> str:
    from pyhanko.pdf_utils.reader import PdfFileReader

    sig = PdfFileReader(BytesIO(pdf)).embedded_signatures[0]
    return f"{sig.signer_cert.serial_number:x}"


def _jws_header(path: Path) -> dict[str, Any]:
    jws = json.loads(path.read_bytes())
    raw = base64.urlsafe_b64decode(jws["protected"] + "=" * (-len(jws["protected"]) % 4))
    header: dict[str, Any] = json.loads(raw)
    return header


def _signer_sha256(path: Path) -> str:
    return hashlib.sha256(base64.b64decode(_jws_header(path)["x5c"][0])).hexdigest()


def _root_der(path: Path) -> bytes:
    jws = json.loads(path.read_bytes())
    doc = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=" * (-len(jws["payload"]) % 4)))
    return next(base64.b64decode(s["certificate"]) for s in doc["services"]
                if s["type"] == "root-ca")


# -- running the corpus ----------------------------------------------------------------------------


@contextmanager
def serving_ca(directory: Path) -> Iterator[str]:
    """The corpus's throwaway CA served again on its port (for online revocation checks)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    port = int(manifest["ca_base_url"].rsplit(":", 1)[1])
    ca = _Instance(directory / "ca", port)
    with ca.serving():
        yield ca.url


def kakuin_verdict(directory: Path, file: str) -> tuple[str, str | None]:
    """kakuin's own verifier on one vector, trusting exactly the corpus's trust list; a file
    it refuses as malformed is TOTAL-FAILED/FORMAT_FAILURE. Loopback fetches allowed (the CA
    is served on 127.0.0.1)."""
    from signing import fetch as outbound
    from signing import trustlist
    from signing import verify as verification
    from signing.errors import BadDocument

    jws = json.loads((directory / "trust-list.jws").read_bytes())
    doc = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=" * (-len(jws["payload"]) % 4)))
    policy = outbound.FetchPolicy(allow_networks=outbound.parse_networks("127.0.0.0/8,::1"))

    def fetch(url: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        return outbound.fetch(url, body, content_type, policy=policy).data

    try:
        report = verification.verify((directory / "vectors" / file).read_bytes(),
                                     trustlist.anchors(doc), fetch=fetch)
    except BadDocument:
        return FAILED, "FORMAT_FAILURE"
    return report.indication, report.sub_indication


# -- scoring a vendor's verifier ---------------------------------------------------------------


def _parse_verdict(stdout: str) -> tuple[str | None, str | None]:
    """``indication``/``sub_indication`` of the first JSON object printed (top level)."""
    start = stdout.find("{")
    if start < 0:
        return None, None
    try:
        data = json.loads(stdout[start:])
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    ind, sub = data.get("indication"), data.get("sub_indication", data.get("subIndication"))
    return (ind if isinstance(ind, str) else None), (sub if isinstance(sub, str) else None)


def score_verifier(directory: Path, command: str, *, verdict_from: str = "exit",
                   match: str = "*", timeout: float = 120.0) -> dict[str, Any]:
    """Run ``command`` (``{file}`` replaced by each vector's path, split like a shell line, no
    shell) over the corpus and score it per vector.

    ``exit``: exit status 0 means "passed", anything else "not passed"; only pass/fail is
    scored. ``json``: the first JSON object on stdout gives ``indication`` and
    ``sub_indication`` (ETSI names), scored too; without one the exit status decides
    pass/fail. The CA must be served (``serving_ca``) for online revocation.
    """
    import fnmatch
    import shlex

    if verdict_from not in ("exit", "json"):
        raise ValueError("verdict_from must be 'exit' or 'json'")
    manifest = json.loads((directory / "manifest.json").read_text())
    rows: list[dict[str, Any]] = []
    for v in manifest["vectors"]:
        if not fnmatch.fnmatch(v["file"], match):
            continue
        path = directory / "vectors" / v["file"]
        argv = [part.replace("{file}", str(path)) for part in shlex.split(command)]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False)
            code: int | None = proc.returncode
            stdout, error = proc.stdout, None
        except subprocess.TimeoutExpired:
            code, stdout, error = None, "", f"timed out after {timeout:.0f} s"
        except OSError as exc:
            code, stdout, error = None, "", str(exc)
        expected = v["expected"]
        want_pass = expected["indication"] == PASSED
        ind, sub = _parse_verdict(stdout) if verdict_from == "json" else (None, None)
        got_pass = ind == PASSED if ind is not None else code == 0
        row: dict[str, Any] = {
            "file": v["file"], "expected": expected, "exit_code": code,
            "seconds": round(time.monotonic() - started, 3),
            "passed": got_pass, "pass_fail_agrees": got_pass == want_pass,
        }
        if verdict_from == "json":
            row.update(indication=ind, sub_indication=sub,
                       indication_agrees=ind == expected["indication"],
                       sub_indication_agrees=(ind == expected["indication"]
                                              and sub == expected["sub_indication"]))
        if error:
            row["error"] = error
        rows.append(row)

    def share(key: str) -> dict[str, Any]:
        good = sum(1 for r in rows if r.get(key))
        return {"agree": good, "total": len(rows),
                "percent": round(100.0 * good / len(rows), 1) if rows else 0.0}

    score = {"pass_fail": share("pass_fail_agrees")}
    if verdict_from == "json":
        score.update(indication=share("indication_agrees"),
                     sub_indication=share("sub_indication_agrees"))
    return {"schema": "kakuin-conformance-verifier-report/1", "command": command,
            "verdict_from": verdict_from, "corpus_generated_at": manifest.get("generated_at"),
            "checked_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "score": score, "vectors": rows}


# -- producer check (PDF) ------------------------------------------------------------------------

LEVEL_ORDER = ("B-B", "B-T", "B-LT", "B-LTA")
_QC_STATEMENTS = "1.3.6.1.5.5.7.1.3"
_QC_TYPE_DER = bytes.fromhex("060604008e460106")  # OID 0.4.0.1862.1.6 (QcType)
_QC_ESEAL_DER = bytes.fromhex("060704008e46010602")  # OID 0.4.0.1862.1.6.2 (eseal)


def check_producer_pdf(data: bytes, *, level: str = "B-LTA",
                       require_visible: bool = True) -> dict[str, Any]:
    """Rules a school's sealed PDF must meet, each with a reason when it fails: PAdES
    sub-filter, required signed attributes (and no CMS signing-time, PAdES B-B), the visible
    seal, an e-seal certificate (QcType eseal, organizationIdentifier, keyUsage
    nonRepudiation), a signature timestamp from B-T, embedded revocation data (DSS) from B-LT,
    a document timestamp for B-LTA. Trust in the issuer is not a producer rule."""
    from cryptography import x509
    from pyhanko.pdf_utils.reader import PdfFileReader

    if level not in LEVEL_ORDER:
        raise ValueError(f"level must be one of {', '.join(LEVEL_ORDER)}")
    rank = LEVEL_ORDER.index(level)
    rules: list[dict[str, Any]] = []

    def rule(name: str, ok: bool, reason: str) -> None:
        rules.append({"rule": name, "passed": ok, "reason": None if ok else reason})

    reader = PdfFileReader(BytesIO(data), strict=False)
    seals = [s for s in reader.embedded_signatures if s.sig_object.get("/Type") != "/DocTimeStamp"]
    if not seals:
        rule("sealed", False, "the PDF carries no signature")
        return {"level": level, "passed": False, "rules": rules}
    sig = seals[0]
    rule("pades-subfilter", sig.sig_object.get("/SubFilter") == "/ETSI.CAdES.detached",
         f"/SubFilter is {sig.sig_object.get('/SubFilter')}, not /ETSI.CAdES.detached")
    signed = {a["type"].native for a in sig.signer_info["signed_attrs"]}
    missing = {"content_type", "message_digest", "signing_certificate_v2"} - signed
    rule("signed-attributes", not missing,
         f"missing signed attributes: {', '.join(sorted(missing))}")
    rule("no-cms-signing-time", "signing_time" not in signed,
         "CMS signing-time attribute present (PAdES B-B: the time goes in /M)")
    rect = [float(x) for x in sig.sig_field.get("/Rect", [0, 0, 0, 0])] if "/Rect" in \
        sig.sig_field else [0.0, 0.0, 0.0, 0.0]
    visible = abs(rect[2] - rect[0]) > 1 and abs(rect[3] - rect[1]) > 1
    if require_visible:
        rule("visible-seal", visible, "the seal has no visible appearance (zero-size widget)")
    cert = x509.load_der_x509_certificate(sig.signer_cert.dump())
    org_id = cert.subject.get_attributes_for_oid(x509.ObjectIdentifier("2.5.4.97"))
    try:
        qc = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_QC_STATEMENTS))
        qc_der = qc.value.public_bytes()
    except x509.ExtensionNotFound:
        qc_der = b""
    rule("eseal-qctype", _QC_TYPE_DER in qc_der and _QC_ESEAL_DER in qc_der,
         "the certificate has no QcType eseal (0.4.0.1862.1.6.2)")
    rule("eseal-organization-identifier", bool(org_id),
         "the certificate's subject has no organizationIdentifier (2.5.4.97)")
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        non_rep = ku.content_commitment
    except x509.ExtensionNotFound:
        non_rep = False
    rule("eseal-key-usage", non_rep, "keyUsage lacks nonRepudiation (contentCommitment)")
    if rank >= 1:
        unsigned = {a["type"].native for a in sig.signer_info["unsigned_attrs"] or []}
        rule("signature-timestamp", "signature_time_stamp_token" in unsigned,
             f"claimed {level} but the seal carries no signature timestamp")
    if rank >= 2:
        rule("revocation-data", "/DSS" in reader.root,
             f"claimed {level} but there is no /DSS with validation data")
    if rank >= 3:
        doc_ts = [s for s in reader.embedded_signatures
                  if s.sig_object.get("/Type") == "/DocTimeStamp"]
        rule("document-timestamp", bool(doc_ts),
             f"claimed {level} but there is no document timestamp")
    return {"level": level, "passed": all(r["passed"] for r in rules), "rules": rules}
