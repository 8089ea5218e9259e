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

    .venv/bin/python bench/issue.py [--count 200] [--rounds 20] [--profile 20] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import secrets
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from harness import (
    REPO,
    InProcessServer,
    Stats,
    Tokens,
    arguments,
    bootstrap,
    call_json,
    environment,
    finish_arguments,
    logger,
    markdown_table,
    new_home,
    open_home,
    print_environment,
    profile_stats,
    remove,
    run_rounds,
    self_signed,
    start_serve,
    stop,
    write_key_and_certificate,
)

PEERS_ALL = ("kakuin-lint", "kakuin-nolint", "kakuin-gunicorn", "openssl")
WARMUP = 5


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
    cert = self_signed(key, "openssl bench CA", days=3650, extensions=[
        (x509.BasicConstraints(ca=True, path_length=0), True)])
    key_path, cert_path = directory / "ca.key", directory / "ca.pem"
    write_key_and_certificate(key, cert, key_path, cert_path)
    return key_path, cert_path, cert


def issue_over_http(port: int, tokens: Tokens, csr: Csr) -> tuple[float, float, str]:
    """submit + approve; returns (submit seconds, approve seconds, certificate PEM)."""
    t0 = time.perf_counter()
    status, req = call_json(port, "/api/v1/seal-requests", tokens.school, {"csr": csr.pem})
    t1 = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"submit: HTTP {status}: {req}")
    status, done = call_json(port, f"/api/v1/seal-requests/{req['id']}/approve",
                             tokens.officer)
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
                r["status"], r["body"] = call_json(
                    server.port, "/api/v1/seal-requests", tokens.school, {"csr": c.pem}
                )
                r["status2"], r["body2"] = call_json(
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
    out = profile_stats(pstats.Stats(prof), len(csrs), wall, BUCKETS,
                        "other (stdlib, uuid, ...)", "approve")
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out["lint_functions_called"] = {
        func: v[1] for (path, _line, func), v in raw.items()
        if path.endswith("ca/lint.py") and func.startswith("lint_")
    }
    return out


def check_certs(pems: Sequence[str], csrs: Sequence[Csr], issuer: x509.Certificate) -> None:
    """Each certificate carries its CSR's key and verifies under its issuer."""
    for pem, csr in zip(pems, csrs, strict=True):
        cert = x509.load_pem_x509_certificate(pem.encode())
        if _spki(cert.public_key()) != csr.spki:
            raise RuntimeError("certificate does not carry its CSR's public key")
        cert.verify_directly_issued_by(issuer)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arguments(__doc__, count=200, rounds=20, what="certificates")
    p.add_argument("--profile", type=int, default=20,
                   help="approvals profiled with and without lint (default 20; 0: none)")
    p.add_argument("--no-gunicorn", action="store_true",
                   help="leave out the `kakuin serve` (gunicorn) peer")
    return finish_arguments(p, p.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logger(args.json)
    peers = [p for p in PEERS_ALL if not (args.no_gunicorn and p == "kakuin-gunicorn")]
    kakuin_peers = [p for p in peers if p.startswith("kakuin")]
    load_at_start = os.getloadavg()

    tmp, home = new_home("issue", log)
    gunicorn: subprocess.Popen[bytes] | None = None
    svc: Any = None
    try:
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

        _settings, svc, app = open_home(home)
        tokens = bootstrap(svc)
        server = InProcessServer(app)
        ports = {"kakuin-lint": server.port, "kakuin-nolint": server.port}
        if "kakuin-gunicorn" in peers:
            gunicorn, ports["kakuin-gunicorn"] = start_serve(home, home / "gunicorn.log")
        issuing = svc.ca.authority().certificate
        assert issuing is not None

        pems: dict[str, list[str]] = {p: [] for p in kakuin_peers}
        phases: dict[str, tuple[list[float], list[float]]] = {p: ([], []) for p in kakuin_peers}
        cursor = dict.fromkeys(peers, 0)

        def peer_fn(peer: str) -> Callable[[], None]:
            def one() -> None:
                csr = pools[peer][cursor[peer]]
                cursor[peer] += 1
                if peer == "openssl":
                    out = tmp / "openssl-out" / f"{cursor[peer]:05d}.pem"
                    openssl_sign(csr, ca_key, ca_cert, out)
                    return
                svc.ca.lint_before_signing = peer != "kakuin-nolint"
                sub, app_, pem = issue_over_http(ports[peer], tokens, csr)
                pems[peer].append(pem)
                phases[peer][0].append(sub)
                phases[peer][1].append(app_)
            return one

        stats, _ = run_rounds({p: peer_fn(p) for p in peers}, args.count, args.rounds, log,
                              warmup=WARMUP)
        svc.ca.lint_before_signing = True

        log("checking every certificate (key and signature)")
        for p in kakuin_peers:
            check_certs(pems[p], pools[p][:len(pems[p])], issuing)
        outs = sorted((tmp / "openssl-out").glob("*.pem"))
        check_certs([o.read_text() for o in outs], pools["openssl"][:len(outs)], openssl_ca)

        profile: dict[str, Any] = {}
        server.stop()  # werkzeug closes its socket here: a fresh server, driven by hand
        if args.profile:
            log(f"profiling {args.profile} approvals with and without lint")
            manual = InProcessServer(app, start=False)
            for label, lint_on, chunk in (
                ("lint", True, profile_csrs[: args.profile]),
                ("no lint", False, profile_csrs[args.profile:]),
            ):
                svc.ca.lint_before_signing = lint_on
                profile[label] = profile_approvals(manual, tokens, chunk)
            svc.ca.lint_before_signing = True
            manual.close()
    finally:
        stop(gunicorn)
        if svc is not None:
            svc.close()
        remove(tmp, args.keep, log)

    summaries = {p: summary(stats[p], phases.get(p)) for p in peers}
    o = stats["openssl"]
    lint, nolint = stats["kakuin-lint"], stats["kakuin-nolint"]
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
    if "kakuin-gunicorn" in stats:
        g = stats["kakuin-gunicorn"]
        ratios["kakuin_gunicorn_over_openssl"] = round(g.per_s / o.per_s, 3)
        ratios["gunicorn_over_werkzeug_lint"] = round(g.per_s / lint.per_s, 3)

    env = environment(
        load_at_start,
        packages=("cryptography", "pkilint", "flask", "werkzeug", "gunicorn", "sqlalchemy"),
        tools={"openssl": ["openssl", "version"], "softhsm": ["softhsm2-util", "--version"]},
        sqlite=sqlite3.sqlite_version, count_per_peer=args.count, rounds=args.rounds,
    )
    if args.json:
        print(json.dumps({"environment": env, "peers": summaries, "ratios": ratios,
                          "profile": profile}, indent=2, ensure_ascii=False))
        return 0

    print()
    print_environment(env, ("date", "command", "git", "nproc", "python", "cryptography",
                            "pkilint", "werkzeug", "gunicorn", "sqlite", "openssl", "softhsm",
                            "loadavg_at_start", "loadavg_at_end"))
    print()
    print(table(summaries))
    print()
    for k, val in ratios.items():
        if isinstance(val, list):
            val = f"min {min(val)}, median {statistics.median(val)}, max {max(val)}"
        print(f"{k}: {val}")
    for label, prof in profile.items():
        print()
        print(f"cProfile, approve only, {label} ({prof['approves']} approvals, "
              f"{prof['profiled_ms_per_approve']} ms each under the profiler; "
              f"lint functions called: {prof['lint_functions_called'] or 'none'}):")
        for b, ms in prof["buckets_ms_per_approve"].items():
            print(f"  {b:38} {ms:8.2f} ms  {100 * prof['buckets_share'][b]:5.1f} %")
        print("  top functions by own time:")
        for f in prof["top_tottime_ms_per_approve"][:6]:
            print(f"    {f['ms']:8.2f} ms  {f['calls']:5} calls  {f['function'][:70]}")
    return 0


def summary(st: Stats, phases: tuple[list[float], list[float]] | None) -> dict[str, Any]:
    """Per-certificate statistics; for kakuin also the submit and approve means."""
    out = st.summary("certs")
    if phases and phases[0]:
        out["ms_submit_mean"] = round(1000 * statistics.fmean(phases[0][-len(st.seconds):]), 2)
        out["ms_approve_mean"] = round(1000 * statistics.fmean(phases[1][-len(st.seconds):]), 2)
    return out


def table(summaries: dict[str, dict[str, Any]]) -> str:
    head = ("peer", "certs", "certs/s", "ms/cert", "median ms", "p95 ms",
            "submit ms", "approve ms", "certs/s by round (min-max)")
    rows = [(
        p, str(s["certs"]), f"{s['per_s']:.1f}", f"{s['ms_mean']:.2f}",
        f"{s['ms_median']:.2f}", f"{s['ms_p95']:.2f}",
        f"{s['ms_submit_mean']:.2f}" if "ms_submit_mean" in s else "-",
        f"{s['ms_approve_mean']:.2f}" if "ms_approve_mean" in s else "-",
        f"{min(s['per_s_by_round']):.0f}-{max(s['per_s_by_round']):.0f}",
    ) for p, s in summaries.items()]
    return markdown_table(head, rows, left=(0, 8))


if __name__ == "__main__":
    sys.exit(main())
