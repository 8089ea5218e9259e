"""Certificates issued per second end to end over HTTP, beside ``openssl x509 -req``.

One issuance is what a school system and its board do: ``POST /api/v1/seal-requests`` with a
fresh P-256 CSR (school-system token), then ``POST /api/v1/seal-requests/<id>/approve``
(board-officer token), which returns the signed certificate. Peers, measured on the same CSR
set, in the same run, taking turns round by round (order reversed every other round) so slow
drift on a shared machine hits them alike:

- ``kakuin-lint``: the app in this process under werkzeug (``threaded=False``), pre-issuance
  linting on (the default in every deployment).
- ``kakuin-nolint``: the same server with ``services.ca.lint_before_signing = False``.
- ``kakuin-gunicorn``: ``kakuin --home <tmp> serve --workers 1`` as a subprocess, lint on: the
  real server (one worker, because SoftHSM 2.6 is driven through a single session per process;
  see config/kakuin.toml). ``--no-gunicorn`` leaves it out.
- ``openssl`` (``x509 -req``): one ``openssl`` process per CSR with an in-memory (file) P-256 CA key
  and ``-set_serial`` random: the floor a user could get with no CA at all. It writes a bare
  certificate (no registry, policy, lint, audit, HSM or database).

Setup (untimed): a temporary home, the real key ceremony (``kakuin --home <tmp> init`` as a
subprocess, SoftHSM token under the home), a board, a school and their API tokens made directly
in the store, and all keys and CSRs generated up front. Every kakuin certificate is checked to
carry its CSR's key and to verify under the issuing CA; every openssl one likewise. The client
opens a new loopback connection per request (werkzeug's dev server and gunicorn's sync worker
both close after each response). Afterwards ``--profile K`` approvals of each kind are run under
cProfile in the server thread to say where the time goes.

    .venv/bin/python bench/issue.py [--count 200] [--rounds 20] [--profile 20] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import http.client
import json
import logging
import os
import platform
import pstats
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ca import clients, registry
from kakuin.app import create_app
from kakuin.services import Services
from kakuin.settings import load_settings

REPO = Path(__file__).resolve().parent.parent

KAKUIN = Path(sys.executable).parent / "kakuin"
# Certificates name a public host: the ETSI lint refuses internal names in AIA/CDP URLs. The
# server itself listens on loopback only.
BASE_URL = "http://pki.example.com"
PEERS_ALL = ("kakuin-lint", "kakuin-nolint", "kakuin-gunicorn", "openssl")
WARMUP = 5
TIMEOUT = 60


@dataclass
class Peer:
    name: str
    seconds: list[float] = field(default_factory=list)  # per certificate, end to end
    submit: list[float] = field(default_factory=list)
    approve: list[float] = field(default_factory=list)
    by_round: list[float] = field(default_factory=list)  # certs/s in each round

    @property
    def count(self) -> int:
        return len(self.seconds)

    @property
    def per_s(self) -> float:
        return self.count / sum(self.seconds)

    @property
    def ms(self) -> float:
        return 1000 * sum(self.seconds) / self.count

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "certs": self.count,
            "certs_per_s": round(self.per_s, 2),
            "ms_per_cert": round(self.ms, 2),
            "ms_median": round(1000 * statistics.median(self.seconds), 2),
            "ms_p95": round(1000 * _quantile(self.seconds, 0.95), 2),
            "certs_per_s_by_round": [round(x, 2) for x in self.by_round],
        }
        if self.submit:
            out["ms_submit_mean"] = round(1000 * statistics.fmean(self.submit), 2)
            out["ms_approve_mean"] = round(1000 * statistics.fmean(self.approve), 2)
        return out


def _quantile(xs: Sequence[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- CSRs and the openssl CA -------------------------------------------------------------------


@dataclass(frozen=True)
class Csr:
    pem: str
    spki: bytes
    path: Path


def make_csrs(n: int, directory: Path) -> list[Csr]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench-{i}")]))
            .sign(key, hashes.SHA256())
        )
        pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        path = directory / f"{i:05d}.csr.pem"
        path.write_text(pem)
        out.append(Csr(pem, _spki(key.public_key()), path))
    return out


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def make_openssl_ca(directory: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openssl bench CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, cert


# -- HTTP client -------------------------------------------------------------------------------


def call(port: int, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request("POST", path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


@dataclass(frozen=True)
class Tokens:
    school: str
    officer: str


def issue_over_http(port: int, tokens: Tokens, csr: Csr) -> tuple[float, float, str]:
    """submit + approve; returns (submit seconds, approve seconds, certificate PEM)."""
    t0 = time.perf_counter()
    status, req = call(port, "/api/v1/seal-requests", tokens.school, {"csr": csr.pem})
    t1 = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"submit: HTTP {status}: {req}")
    status, done = call(port, f"/api/v1/seal-requests/{req['id']}/approve", tokens.officer)
    t2 = time.perf_counter()
    if status != 200 or done.get("status") != "issued":
        raise RuntimeError(f"approve: HTTP {status}: {done}")
    return t1 - t0, t2 - t1, done["certificate"]["pem"]


def openssl_sign(csr: Csr, ca_key: Path, ca_cert: Path, out: Path) -> None:
    subprocess.run(
        [
            "openssl", "x509", "-req", "-in", str(csr.path), "-CA", str(ca_cert),
            "-CAkey", str(ca_key), "-days", "730", "-sha256", "-out", str(out),
            "-set_serial", str(secrets.randbits(127) | 1),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# -- servers -----------------------------------------------------------------------------------


class InProcessServer:
    """werkzeug on loopback in a thread; stoppable so requests can be handled under cProfile."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=False)
        self.port: int = self.server.server_port
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join()
            self._thread = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_gunicorn(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    fh = log.open("ab")
    proc = subprocess.Popen(
        [str(KAKUIN), "--home", str(home), "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=fh,
        stderr=fh,
        env=_child_env(),
    )
    fh.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kakuin serve exited with {proc.returncode}; see {log}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
            conn.close()
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"kakuin serve did not become healthy; see {log}")


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


# -- profile -----------------------------------------------------------------------------------

# Buckets for cProfile's own time (tottime), so they add up. Matched in order, on the file
# path or, for C functions, on the description.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pkilint", ("/pkilint/", "/pyasn1", "pyasn1_fasder", "/pyasn1_alt_modules/", "/dateutil/",
                 "/publicsuffixlist/", "/validators/", "/iso3166", "/iso4217", "ca/lint.py")),
    ("HSM (PKCS#11)", ("/hsm/", "pkcs11")),
    ("database (SQLAlchemy, sqlite3)", ("/sqlalchemy/", "sqlite3", "ca/store.py",
                                        "ca/models.py")),
    ("HTTP (werkzeug, flask, sockets)", ("/werkzeug/", "/flask/", "/http/", "socketserver",
                                         "_socket", "/email/", "select.", "selectors", "/json/",
                                         "/jinja2/", "/itsdangerous/", "/urllib/")),
    ("x509 build (cryptography, asn1crypto)", ("/cryptography/", "cryptography.", "_rust",
                                               "/asn1crypto/")),
    ("logging", ("/logging/", "kakuin/logs.py")),
    ("kakuin code (ca/, kakuin/)", (str(REPO / "ca") + "/", str(REPO / "kakuin") + "/")),
)


def bucket_of(path: str, func: str) -> str:
    key = f"{path} {func}"
    for name, needles in BUCKETS:
        if any(n in key for n in needles):
            return name
    return "other (stdlib, uuid, ...)"


def profile_approvals(
    server: InProcessServer, tokens: Tokens, csrs: Sequence[Csr]
) -> dict[str, Any]:
    """Handle each approve request in this thread under cProfile (submits unprofiled)."""
    prof = cProfile.Profile()
    errors: list[BaseException] = []
    wall = 0.0
    for csr in csrs:
        result: dict[str, Any] = {}

        def client(c: Csr = csr, r: dict[str, Any] = result) -> None:
            try:
                r["status"], r["body"] = call(
                    server.port, "/api/v1/seal-requests", tokens.school, {"csr": c.pem}
                )
                r["status2"], r["body2"] = call(
                    server.port, f"/api/v1/seal-requests/{r['body']['id']}/approve",
                    tokens.officer,
                )
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=client, daemon=True)
        t.start()
        server.server.handle_request()  # the submit, unprofiled
        start = time.perf_counter()
        prof.enable()
        server.server.handle_request()  # the approve
        prof.disable()
        wall += time.perf_counter() - start
        t.join()
        if errors:
            raise errors[0]
        if result.get("status2") != 200:
            raise RuntimeError(f"profiled approve failed: {result}")
    stats = pstats.Stats(prof)
    buckets: dict[str, float] = {}
    lint_calls: dict[str, int] = {}
    total = 0.0
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (path, _line, func), (_cc, nc, tt, _ct, _callers) in raw.items():
        b = bucket_of(path, func)
        buckets[b] = buckets.get(b, 0.0) + tt
        total += tt
        if path.endswith("ca/lint.py") and func.startswith("lint_"):
            lint_calls[func] = nc
    n = len(csrs)
    top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:10]
    return {
        "approvals": n,
        "top_tottime_ms_per_approve": [
            {"function": f"{Path(path).name}:{func}" if path != "~" else func,
             "calls": v[1] // n, "ms": round(1000 * v[2] / n, 2)}
            for (path, _line, func), v in top
        ],
        "profiled_ms_per_approve": round(1000 * wall / n, 2),
        "lint_functions_called": lint_calls,
        "buckets_ms_per_approve": {
            k: round(1000 * v / n, 2) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])
        },
        "buckets_share": {
            k: round(v / total, 3) for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])
        },
    }


# -- environment -------------------------------------------------------------------------------


def _version(cmd: Sequence[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "unknown"
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def environment(args: argparse.Namespace, load_at_start: Sequence[float]) -> dict[str, Any]:
    import sqlite3
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "unknown"

    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "git": head + (" (dirty tree)" if dirty else ""),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pkilint": v("pkilint"),
        "flask": v("flask"),
        "werkzeug": v("werkzeug"),
        "gunicorn": v("gunicorn"),
        "sqlalchemy": v("sqlalchemy"),
        "sqlite": sqlite3.sqlite_version,
        "openssl": _version(["openssl", "version"]),
        "softhsm": _version(["softhsm2-util", "--version"]),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "count_per_peer": args.count,
        "rounds": args.rounds,
    }


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=200,
                   help="certificates per peer (default 200)")
    p.add_argument("--rounds", type=int, default=20,
                   help="split each peer's count into this many alternating rounds (default 20)")
    p.add_argument("--profile", type=int, default=20,
                   help="approvals profiled with and without lint (default 20; 0: none)")
    p.add_argument("--no-gunicorn", action="store_true",
                   help="leave out the `kakuin serve` (gunicorn) peer")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--keep", action="store_true", help="keep the temporary home (for debugging)")
    args = p.parse_args(argv)
    if args.count < 1 or args.rounds < 1 or args.count < args.rounds or args.profile < 0:
        p.error("--count >= --rounds >= 1 and --profile >= 0")
    if args.count > 5000:
        p.error("--count is bounded to 5000")
    return args


def bootstrap(svc: Services) -> Tokens:
    with svc.store.session() as s:
        board = registry.add_board(s, name_ja="新宿区教育委員会", local_gov_code="131041",
                                   actor="bench")
        school = registry.add_school(s, name_ja="新宿区立第一中学校",
                                     school_code="C113210000010", board_id=board.id,
                                     actor="bench")
        _, officer = clients.create_client(s, organization_id=board.id, role="board-officer",
                                           name="bench-officer", actor="bench")
        _, system = clients.create_client(s, organization_id=school.id, role="school-system",
                                          name="bench-school-system", actor="bench")
    return Tokens(school=system, officer=officer)


def check_certs(pems: Sequence[str], csrs: Sequence[Csr], issuer: x509.Certificate) -> None:
    """Each certificate carries its CSR's key and verifies under its issuer."""
    for pem, csr in zip(pems, csrs, strict=True):
        cert = x509.load_pem_x509_certificate(pem.encode())
        if _spki(cert.public_key()) != csr.spki:
            raise RuntimeError("certificate does not carry its CSR's public key")
        cert.verify_directly_issued_by(issuer)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True)) if args.json
        else (lambda s: print(s, flush=True))
    )
    peers = [p for p in PEERS_ALL if not (args.no_gunicorn and p == "kakuin-gunicorn")]
    kakuin_peers = [p for p in peers if p.startswith("kakuin")]
    os.environ.pop("KAKUIN_HSM_PIN", None)
    load_at_start = os.getloadavg()

    tmp = Path(tempfile.mkdtemp(prefix="kakuin-bench-issue-"))
    home = tmp / "home"
    home.mkdir(mode=0o700)
    (home / "kakuin.toml").write_text(f'[server]\nbase_url = "{BASE_URL}"\n')
    gunicorn: subprocess.Popen[bytes] | None = None
    svc: Services | None = None
    try:
        log(f"key ceremony: kakuin --home {home} init")
        subprocess.run([str(KAKUIN), "--home", str(home), "init"], check=True,
                       capture_output=True, env=_child_env())

        per_round = [args.count // args.rounds + (1 if r < args.count % args.rounds else 0)
                     for r in range(args.rounds)]
        n_csrs = len(kakuin_peers) * (args.count + WARMUP) + 2 * args.profile
        log(f"generating {n_csrs} P-256 keys and CSRs")
        csrs = make_csrs(n_csrs, tmp / "csr")
        pools: dict[str, list[Csr]] = {}
        for i, p in enumerate(kakuin_peers):
            pools[p] = csrs[i * (args.count + WARMUP):(i + 1) * (args.count + WARMUP)]
        profile_csrs = csrs[len(kakuin_peers) * (args.count + WARMUP):]
        # openssl signs the same CSRs as the kakuin-lint peer.
        pools["openssl"] = pools["kakuin-lint"]
        ca_key, ca_cert, openssl_ca = make_openssl_ca(tmp)
        (tmp / "openssl-out").mkdir()

        settings = load_settings(home)
        svc = Services.build(settings)
        app = create_app(settings, svc)
        # The request log stays on (INFO, as deployed) but goes to a file, not the terminal;
        # the dev server's own access log is werkzeug's, not kakuin's, and is silenced.
        request_log = (home / "requests.log").open("a")
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(request_log)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        tokens = bootstrap(svc)
        server = InProcessServer(app)
        server.start()
        ports = {"kakuin-lint": server.port, "kakuin-nolint": server.port}
        if "kakuin-gunicorn" in peers:
            gunicorn, ports["kakuin-gunicorn"] = start_gunicorn(home, home / "gunicorn.log")
        issuing = svc.ca.authority().certificate
        assert issuing is not None

        results = {p: Peer(p) for p in peers}
        pems: dict[str, list[str]] = {p: [] for p in kakuin_peers}
        cursor = dict.fromkeys(peers, 0)

        def run(peer: str, n: int, *, record: bool) -> None:
            pool = pools[peer]
            if peer.startswith("kakuin"):
                svc.ca.lint_before_signing = peer != "kakuin-nolint"  # type: ignore[union-attr]
            start = time.perf_counter()
            for _ in range(n):
                csr = pool[cursor[peer]]
                cursor[peer] += 1
                if peer == "openssl":
                    out = tmp / "openssl-out" / f"{cursor[peer]:05d}.pem"
                    t0 = time.perf_counter()
                    openssl_sign(csr, ca_key, ca_cert, out)
                    elapsed, sub, app_ = time.perf_counter() - t0, 0.0, 0.0
                else:
                    sub, app_, pem = issue_over_http(ports[peer], tokens, csr)
                    elapsed = sub + app_
                    if record:
                        pems[peer].append(pem)
                if record:
                    r = results[peer]
                    r.seconds.append(elapsed)
                    if peer != "openssl":
                        r.submit.append(sub)
                        r.approve.append(app_)
            if record:
                results[peer].by_round.append(n / (time.perf_counter() - start))

        log(f"warm-up: {WARMUP} certificates per peer")
        for p in peers:
            run(p, WARMUP, record=False)
        for r, n in enumerate(per_round):
            order = peers if r % 2 == 0 else list(reversed(peers))
            for p in order:
                run(p, n, record=True)
            log(f"round {r + 1}/{args.rounds}: " + "  ".join(
                f"{p} {results[p].by_round[-1]:.1f}/s" for p in peers))
        svc.ca.lint_before_signing = True

        log("checking every certificate (key and signature)")
        for p in kakuin_peers:
            check_certs(pems[p], pools[p][WARMUP:WARMUP + args.count], issuing)
        outs = sorted((tmp / "openssl-out").glob("*.pem"))[WARMUP:]
        check_certs([o.read_text() for o in outs], pools["openssl"][WARMUP:WARMUP + args.count],
                    openssl_ca)

        profile: dict[str, Any] = {}
        if args.profile:
            log(f"profiling {args.profile} approvals with and without lint")
            server.stop()  # werkzeug closes its socket here: a fresh server, driven by hand
            manual = InProcessServer(app)
            for label, lint_on, chunk in (
                ("lint", True, profile_csrs[: args.profile]),
                ("no lint", False, profile_csrs[args.profile:]),
            ):
                svc.ca.lint_before_signing = lint_on
                profile[label] = profile_approvals(manual, tokens, chunk)
            svc.ca.lint_before_signing = True
            manual.server.server_close()
        else:
            server.stop()
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
            try:
                gunicorn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        if svc is not None:
            svc.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    env = environment(args, load_at_start)
    o = results["openssl"]
    lint, nolint = results["kakuin-lint"], results["kakuin-nolint"]
    ratios: dict[str, Any] = {
        "kakuin_lint_over_openssl": round(lint.per_s / o.per_s, 3),
        "kakuin_nolint_over_openssl": round(nolint.per_s / o.per_s, 3),
        "lint_cost_ms_per_cert": round(lint.ms - nolint.ms, 2),
        "lint_cost_ms_by_round": [
            round(1000 / a - 1000 / b, 2)
            for a, b in zip(lint.by_round, nolint.by_round, strict=True)
        ],
        "lint_share_of_kakuin_lint": round((lint.ms - nolint.ms) / lint.ms, 3),
        # Medians resist the outliers a shared machine produces.
        "lint_cost_ms_median": round(
            1000 * (statistics.median(lint.seconds) - statistics.median(nolint.seconds)), 2
        ),
        "kakuin_lint_over_openssl_median": round(
            statistics.median(o.seconds) / statistics.median(lint.seconds), 3
        ),
        "kakuin_nolint_over_openssl_median": round(
            statistics.median(o.seconds) / statistics.median(nolint.seconds), 3
        ),
    }
    if "kakuin-gunicorn" in results:
        g = results["kakuin-gunicorn"]
        ratios["kakuin_gunicorn_over_openssl"] = round(g.per_s / o.per_s, 3)
        ratios["gunicorn_over_werkzeug_lint"] = round(g.per_s / lint.per_s, 3)

    if args.json:
        print(json.dumps({
            "environment": env,
            "peers": {p: results[p].summary() for p in peers},
            "ratios": ratios,
            "profile": profile,
        }, indent=2, ensure_ascii=False))
        return 0

    print()
    for k in ("date", "command", "git", "nproc", "python", "cryptography", "pkilint",
              "werkzeug", "gunicorn", "sqlite", "openssl", "softhsm", "loadavg_at_start",
              "loadavg_at_end"):
        print(f"{k}: {env[k]}")
    print()
    print(table(results, peers))
    print()
    for k, val in ratios.items():
        if isinstance(val, list):
            val = f"min {min(val)}, median {statistics.median(val)}, max {max(val)}"
        print(f"{k}: {val}")
    for label, prof in profile.items():
        print()
        print(f"cProfile, approve only, {label} ({prof['approvals']} approvals, "
              f"{prof['profiled_ms_per_approve']} ms each under the profiler; "
              f"lint functions called: {prof['lint_functions_called'] or 'none'}):")
        for b, ms in prof["buckets_ms_per_approve"].items():
            print(f"  {b:38} {ms:8.2f} ms  {100 * prof['buckets_share'][b]:5.1f} %")
        print("  top functions by own time:")
        for f in prof["top_tottime_ms_per_approve"][:6]:
            print(f"    {f['ms']:8.2f} ms  {f['calls']:5} calls  {f['function'][:70]}")
    return 0


def table(results: dict[str, Peer], peers: Sequence[str]) -> str:
    head = ("peer", "certs", "certs/s", "ms/cert", "median ms", "p95 ms",
            "submit ms", "approve ms", "certs/s by round (min-max)")
    rows = []
    for p in peers:
        s = results[p].summary()
        rows.append((
            p, str(s["certs"]), f"{s['certs_per_s']:.1f}", f"{s['ms_per_cert']:.2f}",
            f"{s['ms_median']:.2f}", f"{s['ms_p95']:.2f}",
            f"{s['ms_submit_mean']:.2f}" if "ms_submit_mean" in s else "-",
            f"{s['ms_approve_mean']:.2f}" if "ms_approve_mean" in s else "-",
            f"{min(s['certs_per_s_by_round']):.0f}-{max(s['certs_per_s_by_round']):.0f}",
        ))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cols: Sequence[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i in (0, 8) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ) + " |"

    sep = "|" + "|".join(
        ":" + "-" * (w + 1) if i in (0, 8) else "-" * (w + 1) + ":" for i, w in enumerate(widths)
    ) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
