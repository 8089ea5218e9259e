"""A kakuin instance served the way ``make run`` serves it: ``kakuin --home H serve`` as its own
OS process (gunicorn, workers from the settings: 2), with its own home, SoftHSM token, SQLite
database and loopback port, its certificates naming that port in their AIA/CDP URLs.

Shared by the concurrency tests and ``bench/verify_load.py``: the point of both is what the real
server does under load, not what an in-process test server does.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCHOOL_NAME = "新宿区立第一中学校"
BOARD_NAME = "新宿区教育委員会"
# Variables of the calling process that must not leak into the instance's environment.
_SCRUB = ("SOFTHSM2_CONF", "KAKUIN_HOME", "KAKUIN_HSM_PIN", "KAKUIN_DATABASE_URL",
          "KAKUIN_BASE_URL", "KAKUIN_PORT", "KAKUIN_HOST", "KAKUIN_REGION", "KAKUIN_WORKERS",
          "KAKUIN_FETCH_ALLOW_NETWORKS", "KAKUIN_STATUS_CACHE_SECONDS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, *, token: str | None = None, body: bytes | None = None,
         content_type: str | None = None, timeout: float = 120,
         ) -> tuple[int, dict[str, str], bytes]:
    """One request; HTTP errors come back as (status, headers, body), not as exceptions."""
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
        return exc.code, dict(exc.headers), exc.read()


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
class Served:
    """One instance; ``start()`` runs ``kakuin serve`` with the settings' worker count."""

    home: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    officer: str = ""
    school_token: str = ""
    school_id: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home.parent / f"{self.home.name}-serve.log"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        # Load from one address measures capacity, not the per-address rate limit (which
        # tests/test_ratelimit.py covers): limits off unless extra_env says otherwise.
        env.update(KAKUIN_BASE_URL=self.url, KAKUIN_PORT=str(self.port),
                   KAKUIN_HOST="127.0.0.1", PYTHONUNBUFFERED="1", KAKUIN_RATE_LIMITS="0")
        env.update(self.extra_env)
        return env

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "kakuin", "--home", str(self.home), *args],
            env=self.env(), cwd=REPO, capture_output=True, text=True, timeout=timeout,
            check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kakuin {' '.join(args)} exited {proc.returncode}:\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def cli_json(self, *args: str) -> Any:
        out = self.cli(*args)
        return json.loads(out[out.index("{"):])

    def init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.cli("init")

    def start(self, wait: float = 90) -> None:
        """``kakuin --home H serve`` exactly as ``make run`` (no --workers: the settings' 2)."""
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kakuin", "--home", str(self.home), "serve"],
                env=self.env(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kakuin serve exited at start:\n{self.log_tail()}")
            try:
                if http("GET", f"{self.url}/healthz", timeout=10)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"kakuin serve did not come up in {wait:.0f} s:\n{self.log_tail()}")

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

    # -- the flows a load test needs -------------------------------------------------------------

    def post_json(self, path: str, body: Any, token: str) -> Any:
        code, _, data = http("POST", self.url + path, token=token,
                             body=json.dumps(body, ensure_ascii=False).encode(),
                             content_type="application/json")
        if code >= 300:
            raise RuntimeError(f"POST {path}: HTTP {code}: {data[:500]!r}")
        return json.loads(data)

    def bootstrap_school(self) -> None:
        """Operator and board by CLI, the school by its board's officer over HTTP, a hosted
        P-256 seal requested by the school's system and approved by the officer."""
        self.cli_json("org", "add", "--kind", "operator", "--name-ja", "運用者")
        board = self.cli_json("org", "add", "--kind", "board", "--name-ja", BOARD_NAME,
                              "--local-gov-code", "131041")
        self.officer = self.cli_json("token", "create", "--org", str(board["id"]),
                                     "--role", "board-officer", "--name", "officer")["token"]
        school = self.post_json("/api/v1/organizations",
                                {"kind": "school", "name_ja": SCHOOL_NAME,
                                 "school_code": "C113210000010"}, self.officer)
        self.school_id = int(school["id"])
        # A school its board registers is pending until the operator confirms it (RA model).
        self.cli_json("org", "confirm", str(self.school_id))
        self.school_token = self.cli_json("token", "create", "--org", str(self.school_id),
                                          "--role", "school-system", "--name", "sys")["token"]
        req = self.post_json("/api/v1/seal-requests",
                             {"key": {"hosted": True, "algorithm": "ECDSA-P256"}},
                             self.school_token)
        done = self.post_json(f"/api/v1/seal-requests/{req['id']}/approve", {}, self.officer)
        if not done.get("certificate"):
            raise RuntimeError(f"approval issued no certificate: {done}")

    def seal_pdf(self, pdf: bytes, level: str, **options: str) -> bytes:
        body, ct = multipart({"level": level, **options},
                             {"file": ("record.pdf", pdf, "application/pdf")})
        code, _, data = http("POST", f"{self.url}/api/v1/seal/pdf", token=self.school_token,
                             body=body, content_type=ct)
        if code != 200:
            raise RuntimeError(f"seal/pdf: HTTP {code}: {data[:500]!r}")
        return data

    def seal_json(self, record: dict[str, Any], level: str) -> bytes:
        code, _, data = http("POST", f"{self.url}/api/v1/seal/json?level={level}",
                             token=self.school_token,
                             body=json.dumps(record, ensure_ascii=False).encode(),
                             content_type="application/json")
        if code != 200:
            raise RuntimeError(f"seal/json: HTTP {code}: {data[:500]!r}")
        return data

    def verify(self, data: bytes, filename: str, timeout: float = 120,
               ) -> tuple[int, dict[str, Any]]:
        """POST /api/v1/verify (multipart): (HTTP status, JSON body)."""
        ctype = "application/pdf" if filename.endswith(".pdf") else "application/json"
        body, ct = multipart({}, {"file": (filename, data, ctype)})
        code, _, out = http("POST", f"{self.url}/api/v1/verify", body=body, content_type=ct,
                            timeout=timeout)
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = {"raw": out[:300].decode("utf-8", "replace")}
        return code, parsed
