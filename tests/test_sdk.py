"""kakuin-client (sdk/) installed alone into fresh venvs, run against a live kakuin over HTTP:
seal request + approval, JSON single/batch, verify, trust-list pinning, problem types, and PDF
sealing by hash only (the server records every request body: the PDF never arrives).
Retry/backoff is checked in-process against a tiny server that answers 429/503 first."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import venv
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from werkzeug.serving import make_server

from ca import status
from kakuin.app import create_app
from kakuin.services import Services
from signing import trustlist
from tests.cafixtures import Env

REPO = Path(__file__).resolve().parent.parent
MARKER = b"KAKUIN-VENDOR-PRIVATE-PUPIL-RECORD-91c2"


class _Recorder:
    """WSGI middleware keeping every request body kakuin receives."""

    def __init__(self, app: Any, bodies: list[bytes]) -> None:
        self.app, self.bodies = app, bodies

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        self.bodies.append(body)
        environ["wsgi.input"] = BytesIO(body)
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kakuin-client's wheel, built from a copy of ./sdk (no build/ left in the checkout)."""
    out = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(REPO / "sdk", out / "sdk",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(source)], check=True, timeout=300)
    return next(out.glob("kakuin_client-*.whl"))


def _venv(path: Path, wheel: Path, *, extra_site: str | None = None) -> Path:
    """A fresh venv (no system site packages) with only kakuin-client pip-installed in it."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    str(wheel)], check=True, timeout=300)
    if extra_site:
        # The pdf extra's packages (pyHanko...) from our venv, without kakuin: a .pth line is
        # a plain path, so our site-packages' own .pth files (kakuin's editable hook) are
        # not processed there.
        site = next((path / "lib").glob("python3*/site-packages"))
        (site / "pdf_extra.pth").write_text(extra_site + "\n")
    return python


def _pdf() -> bytes:
    writer = PdfFileWriter(stream_xrefs=False)
    content = generic.StreamObject(
        stream_data=b"BT /F1 12 Tf 72 720 Td (" + MARKER + b") Tj ET")
    writer.insert_page(PageObject(writer.add_object(content), (0, 0, 595, 842)))
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def recorded(env: Env, settings, services) -> Iterator[tuple[str, list[bytes]]]:
    app = create_app(settings, Services(settings, env.store, services.keys, services.profiles))
    bodies: list[bytes] = []
    server = make_server("127.0.0.1", 0, _Recorder(app, bodies), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", bodies
    finally:
        server.shutdown()


def _run(python: Path, cfg: dict[str, Any], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run([str(python), str(REPO / "tests" / "sdk_flows.py"), json.dumps(cfg)],
                          cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _pin(url: str, services) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{url}/trust-list", timeout=30) as resp:
        raw = resp.read()
    root = status.ca_chain(services.store)[-1]
    return trustlist.verify_trust_list(raw, trust_roots=[root]).signer_sha256


@pytest.mark.parametrize("env", ["sqlite"], indirect=True)
def test_sdk_alone_every_flow_and_hash_only_pdf(env: Env, recorded, services, wheel: Path,
                                                tmp_path: Path) -> None:
    url, bodies = recorded
    pin = _pin(url, services)
    base = {"url": url, "school": env.school, "officer": env.officer_a, "pin": pin}

    # Core: nothing but the standard library and kakuin-client; kakuin is not importable.
    core = _venv(tmp_path / "core", wheel)
    listed = subprocess.run([str(core), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, check=True).stdout
    assert {p["name"] for p in json.loads(listed)} <= {"kakuin-client", "pip", "setuptools"}
    seen = _run(core, base, tmp_path)
    assert seen["kakuin_importable"] is False
    assert seen["issued"] == ["issued", True]
    assert seen["json_verify"] == "TOTAL-PASSED"
    assert seen["batch"] == ["TOTAL-PASSED", "TOTAL-PASSED"]
    assert seen["tampered"] == "TOTAL-FAILED"
    assert seen["unauthenticated"] == ["Unauthenticated", 401]
    assert seen["bad_level"] == ["SigningRefused", 400]
    assert seen["not_found"] == ["NotFound", 404]
    # Without cryptography the SDK refuses to call a list trusted rather than skip the check.
    assert seen["trust"][0] == "TrustListError" and "cryptography" in seen["trust"][1]
    assert seen["trust_wrong_pin"] == "refused"

    # pdf extra: pyHanko et al. reachable, kakuin still not.
    ours = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    full = _venv(tmp_path / "full", wheel, extra_site=str(ours))
    pdf = _pdf()
    (tmp_path / "in.pdf").write_bytes(pdf)
    bodies.clear()
    seen = _run(full, {**base, "pdf": True, "pdf_path": str(tmp_path / "in.pdf"),
                       "sent_path": str(tmp_path / "sent.bin")}, tmp_path)
    assert seen["kakuin_importable"] is False
    assert seen["trust"] == [True, 1, True]
    assert seen["pdf_B-B"] == ["B-B", "TOTAL-PASSED"]
    assert seen["pdf_B-T"] == ["B-T", "TOTAL-PASSED"]
    # The sealing requests (CSC + TSA) the SDK sent, seen by the server: no PDF content.
    sent = (tmp_path / "sent.bin").read_bytes().split(b"\n--SENT--\n")
    assert seen["pdf_sent"] == len(sent) >= 8  # list, info, authorize, signHash x2, tsa
    assert all(len(b) < 2048 for b in sent), [len(b) for b in sent]
    for body in sent:
        assert body in bodies  # what the server received
        assert MARKER not in body and b"%PDF" not in body
    # The PDF reached the server only inside the verify uploads (multipart), after sealing.
    assert all(b.startswith(b"--kakuin-client-") for b in bodies if MARKER in b)


class _Flaky(BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, str]]]] = []
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hits.append(self.path)
        code, headers = self.answers.pop(0) if self.answers else (200, {})
        body = (json.dumps({"type": "urn:kakuin:problem:rate-limited", "title": "slow down",
                            "status": code}) if code != 200 else
                json.dumps({"id": "x", "status": "pending"})).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if code == 200
                         else "application/problem+json")
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_retries_honour_retry_after_then_raise_typed() -> None:
    sys.path.insert(0, str(REPO / "sdk"))
    try:
        import kakuin_client as kc
    finally:
        sys.path.remove(str(REPO / "sdk"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    slept: list[float] = []
    try:
        _Flaky.answers[:] = [(429, {"Retry-After": "7"}), (503, {})]
        client = kc.KakuinClient(url, "t", retries=3, backoff=0.01, sleep=slept.append)
        assert client.seal_request("x")["status"] == "pending"
        assert slept[0] == 7.0 and 0 <= slept[1] <= 0.02 and len(_Flaky.hits) == 3
        _Flaky.answers[:] = [(429, {"Retry-After": "1"})] * 3
        client = kc.KakuinClient(url, "t", retries=2, sleep=slept.append)
        with pytest.raises(kc.RateLimited) as info:
            client.seal_request("x")
        assert info.value.status == 429 and info.value.retry_after == 1.0
        dead = kc.KakuinClient("http://127.0.0.1:9", retries=1, timeout=2, sleep=slept.append)
        with pytest.raises(kc.TransportError):
            dead.verify(b"{}")
    finally:
        server.shutdown()
