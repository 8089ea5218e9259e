"""Two regions end to end, as separate OS processes over real HTTP.

Region A (東京都) and region B (北海道) are two kakuin instances with their own home, SoftHSM
token, SQLite database and port. Their certificates point their AIA/CDP/OCSP URLs at their
own ``KAKUIN_BASE_URL`` (loopback), so B really fetches A's OCSP and CRL. B imports A's trust
list pinned by its signer; a school in A seals a 指導要録 PDF and a JSON record; B verifies
them (TOTAL-PASSED); A revokes the seal; B then sees the revocation: documents timestamped
before it keep their proof (EN 319 102-1 POE), an untimestamped one does not, and A refuses
to seal anything more with the revoked seal.

Every kakuin command runs as a subprocess with its own environment: SoftHSM reads
SOFTHSM2_CONF once per process, and this pytest process already uses the session's token.
``scripts/demo.py`` runs the same flow (``TwoRegions``) and writes a report for people.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_pdf import guidance_record

REPO = Path(__file__).resolve().parent.parent
SCHOOL_NAME = "新宿区立第一中学校"
BOARD_NAME = "新宿区教育委員会"

# Variables of the pytest process that must not leak into an instance's environment.
_SCRUB = ("SOFTHSM2_CONF", "KAKUIN_HOME", "KAKUIN_HSM_PIN", "KAKUIN_DATABASE_URL",
          "KAKUIN_BASE_URL", "KAKUIN_PORT", "KAKUIN_HOST", "KAKUIN_REGION", "KAKUIN_WORKERS",
          "KAKUIN_FETCH_ALLOW_NETWORKS", "KAKUIN_STATUS_CACHE_SECONDS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body


def http(method: str, url: str, *, token: str | None = None, body: bytes | None = None,
         content_type: str | None = None,
         timeout: float = 120) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        raise HttpError(exc.code, exc.read()) from None


def multipart(fields: dict[str, str],
              files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = "kakuin-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    for name, (filename, data, ctype) in files.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


@dataclass
class Region:
    """One kakuin instance: a home, a port, and a gunicorn process once started."""

    key: str  # "A" / "B"
    region: str  # KAKUIN_REGION
    home: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home.parent / f"{self.home.name}-serve.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        # Both regions run on loopback, which outbound fetches refuse unless allowed; the
        # flow checks that B sees A's revocation at once, so B caches no status.
        env.update(KAKUIN_BASE_URL=self.url, KAKUIN_REGION=self.region,
                   KAKUIN_MAINTENANCE_INTERVAL="0", PYTHONUNBUFFERED="1",
                   KAKUIN_FETCH_ALLOW_NETWORKS="127.0.0.0/8,::1",
                   KAKUIN_STATUS_CACHE_SECONDS="0")
        return env

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "kakuin", "--home", str(self.home), *args],
            env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=timeout,
            check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"region {self.key}: kakuin {' '.join(args)} exited "
                               f"{proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def cli_json(self, *args: str) -> Any:
        out = self.cli(*args)
        return json.loads(out[out.index("{"):])

    def start(self, wait: float = 60) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kakuin", "--home", str(self.home), "serve",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"region {self.key} exited at start:\n{self.log_tail()}")
            try:
                status, _, _ = http("GET", f"{self.url}/healthz", timeout=10)
                if status == 200:
                    return
            except (HttpError, urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"region {self.key} did not come up in {wait:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- HTTP -----------------------------------------------------------------------------------

    def post_json(self, path: str, body: Any, token: str) -> Any:
        _, _, data = http("POST", self.url + path, token=token,
                          body=json.dumps(body, ensure_ascii=False).encode(),
                          content_type="application/json")
        return json.loads(data)

    def get_json(self, path: str, token: str | None = None) -> Any:
        return json.loads(http("GET", self.url + path, token=token)[2])

    def verify(self, data: bytes, filename: str) -> dict[str, Any]:
        ctype = "application/pdf" if filename.endswith(".pdf") else "application/json"
        body, ct = multipart({}, {"file": (filename, data, ctype)})
        _, _, out = http("POST", f"{self.url}/api/v1/verify", body=body, content_type=ct)
        return dict(json.loads(out))


def signer_pin(jws_bytes: bytes) -> str:
    """SHA-256 (hex) of the trust list signer's certificate: x5c[0] of the protected header."""
    jws = json.loads(jws_bytes)
    protected = jws["protected"]
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    return hashlib.sha256(base64.b64decode(header["x5c"][0])).hexdigest()


@dataclass
class Sealed:
    name: str
    filename: str
    data: bytes
    level: str
    sealed_at: float  # time.time() when A answered


@dataclass
class TwoRegions:
    """The whole flow; each step returns what it made so callers (test, demo) can report it."""

    base: Path
    a: Region = field(init=False)
    b: Region = field(init=False)
    officer: str = ""
    school_token: str = ""
    school_id: int = 0
    serial: str = ""
    trust_pin: str = ""

    def __post_init__(self) -> None:
        self.a = Region("A", "東京都 (region A)", self.base / "region-a")
        self.b = Region("B", "北海道 (region B)", self.base / "region-b")

    def wipe(self) -> None:
        for r in (self.a, self.b):
            shutil.rmtree(r.home, ignore_errors=True)
            r.log.unlink(missing_ok=True)

    def init(self) -> None:
        """Key ceremonies of both regions (their own tokens, databases and published PKI)."""
        for r in (self.a, self.b):
            r.home.mkdir(parents=True, exist_ok=True)
            r.cli("init")

    def start(self) -> None:
        for r in (self.a, self.b):
            r.start()

    def stop(self) -> None:
        for r in (self.b, self.a):
            r.stop()

    def bootstrap_school(self) -> dict[str, Any]:
        """Operator and board by CLI, the school by the board officer over HTTP (pending until
        the operator confirms it by CLI), then a hosted seal requested by the school and
        approved by the officer (dual control: not the requester). Returns the certificate."""
        a = self.a
        a.cli_json("org", "add", "--kind", "operator", "--name-ja", "運用者")
        board = a.cli_json("org", "add", "--kind", "board", "--name-ja", BOARD_NAME,
                           "--local-gov-code", "131041")
        self.officer = a.cli_json("token", "create", "--org", str(board["id"]),
                                  "--role", "board-officer", "--name", "officer")["token"]
        school = a.post_json("/api/v1/organizations",
                             {"kind": "school", "name_ja": SCHOOL_NAME,
                              "school_code": "C113210000010"}, self.officer)
        self.school_id = int(school["id"])
        a.cli_json("org", "confirm", str(self.school_id))
        self.school_token = a.cli_json("token", "create", "--org", str(self.school_id),
                                       "--role", "school-system", "--name", "sys")["token"]
        req = a.post_json("/api/v1/seal-requests",
                          {"key": {"hosted": True, "algorithm": "ECDSA-P256"}}, self.school_token)
        done = a.post_json(f"/api/v1/seal-requests/{req['id']}/approve", {}, self.officer)
        cert = done.get("certificate")
        if not cert:
            raise RuntimeError(f"approval issued no certificate: {done}")
        self.serial = str(cert["serial"])
        return dict(cert)

    def import_trust(self) -> dict[str, Any]:
        """B fetches A's signed trust list over HTTP and imports it pinned by its signer."""
        jws = http("GET", f"{self.a.url}/trust-list")[2]
        self.trust_pin = signer_pin(jws)
        out = self.b.cli("trust", "import", f"{self.a.url}/trust-list",
                         "--pin", self.trust_pin, "--name", "region-a")
        return {"pin": self.trust_pin, "output": out.strip()}

    def seal_pdf(self, level: str, name: str) -> Sealed:
        pdf = guidance_record(pages=3)
        body, ct = multipart({"level": level}, {"file": ("guidance.pdf", pdf, "application/pdf")})
        _, headers, data = http("POST", f"{self.a.url}/api/v1/seal/pdf", token=self.school_token,
                                body=body, content_type=ct)
        return Sealed(name, f"{name}.pdf", data, headers.get("X-Kakuin-Level", level), time.time())

    def seal_json(self, level: str, name: str, record: dict[str, Any]) -> Sealed:
        _, _, data = http("POST", f"{self.a.url}/api/v1/seal/json?level={level}",
                          token=self.school_token,
                          body=json.dumps(record, ensure_ascii=False).encode(),
                          content_type="application/json")
        return Sealed(name, f"{name}.json", seal_document(data), level, time.time())

    def revoke(self) -> dict[str, Any]:
        return dict(self.a.post_json(f"/api/v1/certificates/{self.serial}/revoke",
                                     {"reason": "keyCompromise"}, self.officer))


def seal_document(response: bytes) -> bytes:
    """The JWS to verify out of /api/v1/seal/json's answer (the JWS itself, or wrapped)."""
    doc = json.loads(response)
    if isinstance(doc, dict) and "signatures" not in doc and "protected" not in doc:
        for key in ("jws", "seal", "jades", "signature"):
            if key in doc:
                inner = doc[key]
                return (inner if isinstance(inner, str) else json.dumps(inner)).encode()
    return response


GUIDANCE_JSON: dict[str, Any] = {
    "type": "指導要録",
    "school": SCHOOL_NAME,
    "school_code": "C113210000010",
    "student": {"name": "山田 花子", "grade": 1},
    "year": "令和8年度",
    "notes": "学習の記録: 国語 A, 数学 A, 英語 B",
}


@pytest.fixture(scope="module")
def regions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRegions]:
    two = TwoRegions(tmp_path_factory.mktemp("two-regions"))
    try:
        two.init()
        two.start()
        yield two
    finally:
        two.stop()


def _indications(report: dict[str, Any]) -> str:
    return json.dumps({"indication": report["indication"],
                       "sub_indication": report.get("sub_indication"),
                       "signatures": [(s["indication"], s["sub_indication"],
                                       [c["name"] for c in s["checks"] if not c["passed"]])
                                      for s in report["signatures"]]}, ensure_ascii=False)


def _seal_status(report: dict[str, Any], serial: str) -> dict[str, Any]:
    """The revocation evidence B gathered for the seal certificate."""
    seal = next(s for s in report["signatures"] if s["kind"] == "seal")
    check = next(c for c in seal["checks"] if c["name"] == "revocation")
    return next(c for c in check["evidence"]["certificates"]
                if c.get("serial", "").lower() == serial.lower())


def test_two_regions_end_to_end(regions: TwoRegions) -> None:
    two = regions
    cert = two.bootstrap_school()
    assert cert["serial"]
    two.import_trust()

    lta = two.seal_pdf("B-LTA", "guidance-B-LTA")
    bt = two.seal_pdf("B-T", "guidance-B-T")
    bb = two.seal_pdf("B-B", "guidance-B-B")
    rec = two.seal_json("B-T", "guidance-record", GUIDANCE_JSON)

    # Before revocation: B verifies everything A sealed, fetching A's OCSP/CRL over HTTP.
    for doc in (lta, bt, bb, rec):
        report = two.b.verify(doc.data, doc.filename)
        assert report["indication"] == "TOTAL-PASSED", (doc.name, _indications(report))
        seal = next(s for s in report["signatures"] if s["kind"] == "seal")
        assert seal["sealed_by"].get("organization") == SCHOOL_NAME, seal["sealed_by"]
    # ... and it asked A's OCSP responder, over HTTP, about the seal.
    status = _seal_status(two.b.verify(bb.data, bb.filename), two.serial)
    assert (status["source"], status["status"]) == ("OCSP", "good"), status
    assert status["url"].startswith(two.a.url), status

    time.sleep(1.5)  # the timestamps must be strictly earlier than the revocation
    revoked = two.revoke()
    assert revoked.get("status") == "revoked", revoked

    # After: timestamped documents keep their proof of existence before the revocation.
    for doc in (lta, bt, rec):
        report = two.b.verify(doc.data, doc.filename)
        assert report["indication"] == "TOTAL-PASSED", (doc.name, _indications(report))
    # No timestamp, no proof that the seal was made before the revocation.
    report = two.b.verify(bb.data, bb.filename)
    assert report["indication"] != "TOTAL-PASSED", _indications(report)
    assert (report["indication"], report["sub_indication"]) == (
        "INDETERMINATE", "REVOKED_NO_POE"), _indications(report)
    status = _seal_status(report, two.serial)
    assert (status["source"], status["status"]) == ("OCSP", "revoked"), status

    # After the revocation A refuses to seal with the revoked seal.
    with pytest.raises(HttpError) as refused:
        two.seal_pdf("B-T", "after-revocation")
    assert 400 <= refused.value.status < 500, refused.value
    with pytest.raises(HttpError) as refused_json:
        two.seal_json("B-T", "after-revocation", GUIDANCE_JSON)
    assert 400 <= refused_json.value.status < 500, refused_json.value

    for r in (two.a, two.b):
        assert "Traceback" not in r.log_tail(200_000), r.log_tail()
