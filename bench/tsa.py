"""RFC 3161 timestamp tokens per second over HTTP, beside ``openssl ts -reply`` per token.

Peers, on the same queries (SHA-256 imprint, 64-bit nonce, certReq, as ``openssl ts -query``
makes them), in the same run, taking turns round by round (order reversed every other round)
so slow drift on a shared machine hits them alike:

- ``kakuin-http``: ``POST /tsa`` over loopback, a new connection per token. When
  ``kakuin serve`` answers ``/tsa`` (the route of signing/api.py) this is the real server,
  ``kakuin --home <tmp> serve --workers 1`` (gunicorn; one worker because SoftHSM 2.6 is driven
  through one session per process). Until then it is a minimal Flask app of this script
  (``fallback_app``) whose route only calls ``signing.tsa.TimeStampAuthority.respond``, under
  ``gunicorn --workers 1`` likewise; the output says which one ran.
- ``kakuin-respond``: ``respond()`` called directly in this process: the TSA without HTTP.
- ``respond-nosync`` (diagnostic, not a deployment setting): the same on a second connection
  pool to the same database with ``PRAGMA synchronous = NORMAL`` (in WAL mode a commit then
  survives a crash of the process but not of the machine, and waits for no fsync): what the
  per-token fsync costs.
- ``http-floor`` (diagnostic): ``POST /tsa`` with an empty body on the same server, answered
  with a ``badDataFormat`` rejection: the HTTP round trip and route without database or HSM.
- ``openssl``: ``openssl ts -reply -queryfile q.tsq -config ts.cnf -signer tsa.pem -inkey
  tsa.key -out r.tsr``, one process per token, P-256 key in a file (in memory), ESSCertIDv2,
  accuracy 1 s, TSA name, its serial file in the temporary directory (written, not synced).

kakuin's TSA signs in the HSM and records every serial (with the imprint) in the database
before signing: one SQLite transaction per token, and ``synchronous`` stays FULL (ca/store.py),
so each token waits for an fsync. The in-process peers are timed piece by piece as they run
(database insert, HSM signature, the rest) to show where the time goes.

Setup (untimed): a temporary home and the real key ceremony (``kakuin --home <tmp> init`` as a
subprocess; never ./var), a throwaway openssl TSA certificate, all queries. Every answer is
checked (granted, nonce echoed, imprint); a sample is verified with ``openssl ts -verify``.

    .venv/bin/python bench/tsa.py [--count 300] [--rounds 10] [--json] [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asn1crypto import cms, tsp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from harness import (
    REPO,
    TIMEOUT,
    Stats,
    arguments,
    child_env,
    environment,
    finish_arguments,
    free_port,
    logger,
    new_home,
    remove,
    run_rounds,
    self_signed,
    start_serve,
    stop,
    wait_healthy,
    write_key_and_certificate,
)
from sqlalchemy import event

from ca.store import Store
from kakuin.services import Services
from kakuin.settings import load_settings
from signing.tsa import (
    ETSI_BTSP_POLICY,
    QUERY_CONTENT_TYPE,
    REPLY_CONTENT_TYPE,
    TimeStampAuthority,
    TimeStampResponse,
)

PEERS = ("kakuin-http", "kakuin-respond", "respond-nosync", "http-floor", "openssl")
WARMUP = 5

TS_CNF = """\
[ tsa ]
default_tsa = bench_tsa

[ bench_tsa ]
dir = {dir}
serial = {dir}/tsaserial
signer_digest = sha256
default_policy = {policy}
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


# -- queries and checks ------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    der: bytes
    path: Path
    nonce: int
    digest: bytes


def make_queries(n: int, directory: Path) -> list[Query]:
    """Shaped as ``openssl ts -query -sha256 -cert`` makes them (NULL parameters, 64-bit nonce)."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        digest = hashlib.sha256(secrets.token_bytes(32)).digest()
        nonce = secrets.randbits(63) | (1 << 62)
        der = tsp.TimeStampReq(
            {
                "version": "v1",
                "message_imprint": {
                    "hash_algorithm": {"algorithm": "sha256"},
                    "hashed_message": digest,
                },
                "nonce": nonce,
                "cert_req": True,
            }
        ).dump()
        path = directory / f"{i:05d}.tsq"
        path.write_bytes(der)
        out.append(Query(der, path, nonce, digest))
    return out


def check(response: bytes, query: Query) -> None:
    resp = TimeStampResponse.load(response)
    if resp["status"]["status"].native != "granted":
        raise RuntimeError(f"not granted: {resp['status'].native}")
    token: cms.ContentInfo = resp["time_stamp_token"]
    info = token["content"]["encap_content_info"]["content"].parsed
    if info["nonce"].native != query.nonce:
        raise RuntimeError("nonce not echoed")
    if info["message_imprint"]["hashed_message"].native != query.digest:
        raise RuntimeError("wrong imprint")


def check_rejected(response: bytes, _query: Query) -> None:
    st = TimeStampResponse.load(response)["status"]
    if st["status"].native != "rejection" or st["fail_info"].native != {"bad_data_format"}:
        raise RuntimeError(f"expected badDataFormat: {st.native}")


def openssl_verify(response: bytes, query: Query, ca_file: Path, work: Path) -> None:
    path = work / "verify.tsr"
    path.write_bytes(response)
    out = subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-queryfile",
            str(query.path),
            "-in",
            str(path),
            "-CAfile",
            str(ca_file),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if "Verification: OK" not in out.stdout:
        raise RuntimeError(f"openssl ts -verify failed: {out.stdout}{out.stderr}")


# -- the openssl TSA ---------------------------------------------------------------------------


def make_openssl_tsa(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed P-256 TSA certificate (critical EKU timeStamping), key in a file."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed(key, "openssl bench TSA", days=30, extensions=[
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True),
    ])
    key_path, cert_path, cnf = directory / "tsa.key", directory / "tsa.pem", directory / "ts.cnf"
    write_key_and_certificate(key, cert, key_path, cert_path)
    (directory / "tsaserial").write_text("01\n")
    cnf.write_text(TS_CNF.format(dir=directory, policy=ETSI_BTSP_POLICY))
    return key_path, cert_path, cnf


def openssl_reply(query: Query, key: Path, cert: Path, cnf: Path, out: Path) -> bytes:
    subprocess.run(
        [
            "openssl",
            "ts",
            "-reply",
            "-queryfile",
            str(query.path),
            "-config",
            str(cnf),
            "-signer",
            str(cert),
            "-inkey",
            str(key),
            "-out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return out.read_bytes()


# -- kakuin over HTTP --------------------------------------------------------------------------


def post(port: int, body: bytes) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", "/tsa", body=body, headers={"Content-Type": QUERY_CONTENT_TYPE})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or resp.getheader("Content-Type") != REPLY_CONTENT_TYPE:
            raise RuntimeError(f"POST /tsa: HTTP {resp.status} {resp.getheader('Content-Type')}")
        return data
    finally:
        conn.close()


def fallback_app() -> Any:
    """The stand-in for signing/api.py's route (``gunicorn 'bench.tsa:fallback_app()'``):
    Flask, one call to ``respond``, the reply content type. Home from ``BENCH_TSA_HOME``."""
    from flask import Flask, Response, request

    svc = Services.build(load_settings(Path(os.environ["BENCH_TSA_HOME"])))
    authority = TimeStampAuthority(svc.store, svc.keys, policy_oid=ETSI_BTSP_POLICY)
    app = Flask("bench-tsa")

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    @app.post("/tsa")
    def tsa() -> Response:
        der = authority.respond(request.get_data(), requester=request.remote_addr)
        return Response(der, mimetype=REPLY_CONTENT_TYPE)

    return app


def start_fallback(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**child_env(), "BENCH_TSA_HOME": str(home),
           "PYTHONPATH": os.pathsep.join((str(REPO), str(REPO / "bench")))}
    cmd = [
        str(Path(sys.executable).parent / "gunicorn"),
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        "--chdir",
        str(REPO),
        "bench.tsa:fallback_app()",
    ]
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, env=env)
    wait_healthy(proc, port, log)
    return proc, port


def serve_has_tsa(port: int, query: Query) -> bool:
    try:
        check(post(port, query.der), query)
        return True
    except (RuntimeError, OSError, ValueError):
        return False


def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA synchronous = NORMAL")
    finally:
        cursor.close()


# -- the in-process breakdown ------------------------------------------------------------------


class Timed:
    """Wraps a callable and adds up its wall time under the current label (the peer)."""

    label: str | None = None

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.totals: dict[str, float] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            if Timed.label is not None:
                self.totals[Timed.label] = (
                    self.totals.get(Timed.label, 0.0) + time.perf_counter() - t
                )


def instrument(keys: Any) -> tuple[Timed, Timed]:
    """Time the database insert and the HSM signature of the in-process peers."""
    from signing import tsa as tsa_module

    record, sign = Timed(tsa_module.status.record_tsa_serial), Timed(keys.sign_digest)
    tsa_module.status.record_tsa_serial = record
    keys.sign_digest = sign
    return record, sign


def breakdown(peer: Stats, record: Timed, sign: Timed) -> dict[str, float]:
    """Mean ms per token in the database insert, the HSM signature and everything else."""
    n, total = len(peer.seconds), sum(peer.seconds)
    db, hsm = record.totals.get(peer.name, 0.0), sign.totals.get(peer.name, 0.0)
    return {
        "ms_total": round(1000 * total / n, 3),
        "ms_database_insert": round(1000 * db / n, 3),
        "ms_hsm_signature": round(1000 * hsm / n, 3),
        "ms_rest": round(1000 * (total - db - hsm) / n, 3),
    }


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arguments(__doc__, count=300, rounds=10, what="tokens")
    return finish_arguments(p, p.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logger(args.json)
    os.environ.pop("KAKUIN_HSM_PIN", None)
    load0 = os.getloadavg()
    tmp, home = new_home("tsa", log)
    work = tmp / "work"
    work.mkdir()
    gunicorn: subprocess.Popen[bytes] | None = None
    svc: Services | None = None
    nosync_store: Store | None = None
    try:
        per_peer = args.count + WARMUP
        queries = make_queries(len(PEERS) * per_peer + 1, tmp / "queries")
        pools = {p: queries[i * per_peer : (i + 1) * per_peer] for i, p in enumerate(PEERS)}
        extra = queries[len(PEERS) * per_peer :]
        ossl_key, ossl_cert, ossl_cnf = make_openssl_tsa(work)

        svc = Services.build(load_settings(home))
        authority = TimeStampAuthority(svc.store, svc.keys, policy_oid=ETSI_BTSP_POLICY)
        nosync_store = Store(svc.settings.database_url)
        event.listen(nosync_store.engine, "connect", _synchronous_normal)
        nosync = TimeStampAuthority(nosync_store, svc.keys, policy_oid=ETSI_BTSP_POLICY)

        gunicorn, port = start_serve(home, tmp / "serve.log")
        if serve_has_tsa(port, extra[0]):
            http_kind = "kakuin serve --workers 1 (gunicorn), POST /tsa of signing/api.py"
        else:
            stop(gunicorn)
            gunicorn = None
            gunicorn, port = start_fallback(home, tmp / "fallback.log")
            http_kind = (
                "no /tsa route in `kakuin serve` yet: a minimal Flask app of this script "
                "calling respond(), under gunicorn --workers 1"
            )
        log(f"kakuin-http: {http_kind}")

        runners: dict[str, Callable[[Query], bytes]] = {
            "kakuin-http": lambda q: post(port, q.der),
            "kakuin-respond": lambda q: authority.respond(q.der),
            "respond-nosync": lambda q: nosync.respond(q.der),
            "http-floor": lambda q: post(port, b""),
            "openssl": lambda q: openssl_reply(q, ossl_key, ossl_cert, ossl_cnf, work / "r.tsr"),
        }
        checks: dict[str, Callable[[bytes, Query], None]] = {
            name: check_rejected if name == "http-floor" else check for name in PEERS
        }
        ca_files = {
            "kakuin-http": home / "pki" / "kakuin-root-ca.pem",
            "kakuin-respond": home / "pki" / "kakuin-root-ca.pem",
            "respond-nosync": home / "pki" / "kakuin-root-ca.pem",
            "openssl": ossl_cert,
        }
        log("warm-up and checks (openssl ts -verify of each peer's first tokens)")
        for name, run in runners.items():
            for q in pools[name][:WARMUP]:
                der = run(q)
                checks[name](der, q)
                if name in ca_files:
                    openssl_verify(der, q, ca_files[name], work)

        record, sign = instrument(svc.keys)
        offsets = dict.fromkeys(PEERS, WARMUP)

        def timed_peer(name: str) -> Callable[[], bytes]:
            """The next query of this peer's pool; every answer checked; time attributed."""
            def one() -> bytes:
                q = pools[name][offsets[name]]
                offsets[name] += 1
                Timed.label = name
                try:
                    der = runners[name](q)
                finally:
                    Timed.label = None
                checks[name](der, q)
                return der
            return one

        stats, _ = run_rounds({name: timed_peer(name) for name in PEERS}, args.count,
                              args.rounds, log, warmup=0)

        env = environment(
            load0, packages=("asn1crypto", "flask", "werkzeug", "gunicorn"),
            tools={"openssl": ["openssl", "version"], "softhsm": ["softhsm2-util", "--version"]},
            kakuin_http=http_kind, sqlite=sqlite3.sqlite_version, count_per_peer=args.count,
            rounds=args.rounds,
        )
        result = {
            "environment": env,
            "peers": {name: p.summary("tokens") for name, p in stats.items()},
            "ratios": {
                "http_over_openssl": round(stats["kakuin-http"].per_s / stats["openssl"].per_s, 2),
                "respond_over_openssl": round(
                    stats["kakuin-respond"].per_s / stats["openssl"].per_s, 2
                ),
                "nosync_over_openssl": round(
                    stats["respond-nosync"].per_s / stats["openssl"].per_s, 2
                ),
                "http_over_openssl_medians": round(
                    statistics.median(stats["openssl"].seconds)
                    / statistics.median(stats["kakuin-http"].seconds),
                    2,
                ),
                # Rounds are paired in time, so a per-round ratio cancels most load swings.
                "http_over_openssl_median_of_rounds": round(
                    statistics.median(
                        a / b
                        for a, b in zip(
                            stats["kakuin-http"].by_round, stats["openssl"].by_round, strict=True
                        )
                    ),
                    2,
                ),
            },
            "breakdown_ms_per_token": {
                name: breakdown(stats[name], record, sign)
                for name in ("kakuin-respond", "respond-nosync")
            },
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print_table(result)
        return 0
    finally:
        stop(gunicorn)
        if svc is not None:
            svc.store.dispose(close=True)
        if nosync_store is not None:
            nosync_store.dispose(close=True)
        remove(tmp, args.keep, log)


def print_table(result: dict[str, Any]) -> None:
    env = result["environment"]
    print()
    print(
        f"{env['date']}  git {env['git']}  {env['nproc']} CPUs  load {env['loadavg_at_start']}"
        f" -> {env['loadavg_at_end']}"
    )
    print(f"kakuin-http: {env['kakuin_http']}")
    print(f"{env['openssl']}; SQLite {env['sqlite']}; {env['softhsm']}")
    print()
    print("| peer           | tokens | tokens/s | ms mean | median ms | p95 ms |")
    print("|:---------------|-------:|---------:|--------:|----------:|-------:|")
    for name, p in result["peers"].items():
        print(
            f"| {name:<14} | {p['tokens']:>6} | {p['per_s']:>8.1f} | "
            f"{p['ms_mean']:>7.2f} | {p['ms_median']:>9.2f} | {p['ms_p95']:>6.2f} |"
        )
    r = result["ratios"]
    print()
    print(
        f"kakuin-http / openssl: {r['http_over_openssl']}x (medians "
        f"{r['http_over_openssl_medians']}x, median of per-round ratios "
        f"{r['http_over_openssl_median_of_rounds']}x); respond() / openssl: "
        f"{r['respond_over_openssl']}x; respond-nosync / openssl: "
        f"{r['nosync_over_openssl']}x; target >= 5x"
    )
    for name, b in result["breakdown_ms_per_token"].items():
        print(
            f"{name} per token: {b['ms_total']} ms = database insert "
            f"{b['ms_database_insert']} + HSM signature {b['ms_hsm_signature']} + rest "
            f"{b['ms_rest']}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
