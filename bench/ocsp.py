"""OCSP responses per second over HTTP: kakuin under gunicorn beside ``openssl ocsp``.

Both servers answer for the same number of certificates with the same serial numbers and the
same statuses (a tenth revoked, keyCompromise), with a P-256 responder key and certificate,
and both are driven in the same run by the same load generator (``wrk``, connection per
request on both sides: gunicorn's sync worker and openssl's responder close after each
answer) with the same requests: one SHA-1 CertID, no nonce (the cacheable RFC 5019 path),
cycling through all the certificates, over POST and over GET (base64, URL-encoded, RFC 6960
A.1). Peers take turns cell by cell, the order reversed every other round; medians reported.

- ``kakuin``: ``kakuin --home <tmp> serve --workers 2`` (gunicorn, 2 sync workers) after the
  real key ceremony (``kakuin init``: SoftHSM token, SQLite) into a temporary home. The
  certificates are issued beforehand by ``ca.issuer.issue`` in a separate process, revoked
  ones are marked in the database, and every response is pre-signed (``refresh_stale``), as
  the scheduler keeps them. Maintenance is off during the run (KAKUIN_MAINTENANCE_INTERVAL=0).
  Logging stays at the default INFO level (one JSON line per request), as deployed. The
  rate limit layer checks every request as deployed, with an OCSP limit no run reaches (the
  default 100/s per address would turn most answers into tryLater).
- ``kakuin-baseline`` (with ``--baseline SRC``): the same home served from another source
  tree, to measure a change of the responder against its base in the same run.
- ``gunicorn-floor``: gunicorn as ``kakuin serve`` runs it, around a WSGI app returning one
  canned kakuin response: no Flask, no database, no OCSP. The ceiling of this deployment.
- ``openssl-multi2``: ``openssl ocsp -index index.txt -port P -multi 2`` (two forked
  responder processes, like kakuin's two workers), with its own throwaway P-256 CA and
  responder certificate (kakuin's responder key lives in the HSM); the index holds the same
  serials and statuses, and its requests carry CertIDs of that CA. It signs every answer.
- ``openssl``: the same, single process (openssl's default).
- ``kakuin-nginx`` (when nginx is installed): nginx with the production template
  (config/nginx, rendered by scripts/cluster.py: buffering, keep-alive to the node, GET
  answers cached at most 10 s and revalidated by ETag) in front of the same ``kakuin`` server:
  the front as deployed (docs/deployment.md). GET and POST (no nonce: the front caches POST
  keyed on the request body) cycle through all the certificates, so after the first pass they
  are cache hits.
- ``kakuin-nginx-nonce``: the same front, each request carrying a nonce (one per certificate):
  never cached, every request reaches kakuin (what clients that send nonces get); 50
  distinct nonces per certificate.

Before timing, every certificate is asked once from every server, by GET and POST, and the
answers are checked (status, signature, reason); a sample also goes through
``openssl ocsp -respin ... -CAfile`` verification. Each cell also reports the server's CPU
time per response (user+system of its process group, from /proc).

openssl 3.0's responder spins for good on a connection closed before any request
(openssl/openssl#31129), which wrk does once at start (its address check, skipped here) and
for connections it opens just as a run ends: each openssl run therefore gets a fresh server.

``openssl ocsp -port`` takes a bare port and listens on every address ([::]), so the whole
benchmark (servers and load generator) runs in a private network namespace with only loopback:
the script re-executes itself under ``unshare -n`` (needs root) and brings ``lo`` up there.
Traffic goes to 127.0.0.1 only. Needs ``wrk`` (Debian: apt-get install wrk).

    .venv/bin/python bench/ocsp.py [--certs 100] [--seconds 10] [--rounds 3]
        [--connections 32] [--threads 2] [--profile 10] [--baseline SRC] [--json]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import functools
import hashlib
import json
import os
import pstats
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from harness import environment, free_port

REPO = Path(__file__).resolve().parent.parent
KAKUIN = Path(sys.executable).parent / "kakuin"
NETNS_ENV = "KAKUIN_BENCH_NETNS"
SERVER_ENV = {
    # Certificates name a public host (the ETSI lint refuses loopback URLs); the server itself
    # listens on 127.0.0.1 in the private namespace.
    "KAKUIN_BASE_URL": "http://pki.example.com",
    "KAKUIN_MAINTENANCE_INTERVAL": "0",
}
ISSUING = "kakuin-issuing-ca"
PEERS = ("kakuin", "kakuin-nginx", "kakuin-nginx-nonce", "kakuin-baseline", "gunicorn-floor",
         "openssl-multi2", "openssl")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
METHODS = ("POST", "GET")
NONCES_PER_CERT = 50
NO_LIMIT = "1000000/second"
WARMUP_SECONDS = 3
START_TIMEOUT = 60

# --- isolation ----------------------------------------------------------------------------------


def isolate(argv: Sequence[str]) -> None:
    """Re-execute under ``unshare -n`` unless already inside; then bring loopback up and check
    that loopback is the only interface."""
    if os.environ.get(NETNS_ENV) != "1":
        unshare = shutil.which("unshare")
        if unshare is None:
            raise SystemExit("unshare(1) not found: it keeps openssl ocsp off the network")
        env = {**os.environ, NETNS_ENV: "1"}
        os.execve(unshare, [unshare, "-n", "--", sys.executable, __file__, *argv], env)  # noqa: S606
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    links = subprocess.run(
        ["ip", "-o", "link", "show"], capture_output=True, text=True, check=True
    ).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line]
    if names != ["lo"]:
        raise SystemExit(f"not isolated: interfaces {names}")


def wait_ready(target: Target, timeout: float = START_TIMEOUT) -> None:
    """Until the server answers a real OCSP request. Not a bare connect: openssl 3.0's
    responder stops answering after a connection that closes without a request."""
    assert target.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        if target.proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited with {target.proc.returncode}")
        try:
            fetch(target, "POST", target.requests[0])
            return
        except (ConnectionError, urllib.error.URLError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} not ready after {timeout} s") from exc
            time.sleep(0.2)


# --- kakuin: home, certificates, pre-signed responses --------------------------------------------


def issue_certificates(home: Path, count: int, revoked: int, out: Path) -> None:
    """Runs in its own process (``--_issue``), before gunicorn: SoftHSM likes one process."""
    from sqlalchemy import update

    from ca import ocsp
    from ca.issuer import CertificateOrder, issue
    from ca.models import Certificate, serial_hex
    from kakuin.services import Services
    from kakuin.settings import load_settings

    services = Services.build(load_settings(home))
    authority = services.ca.authority()
    profile = services.profiles["ocsp-responder"]
    serials = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kakuin bench"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"bench leaf {i}"),
            ]
        )
        cert = issue(
            services.store,
            authority,
            CertificateOrder(profile, subject, key.public_key()),
            actor="bench",
            lint_before_signing=False,
        )
        serials.append(cert.serial_number)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    revoked_serials = random.sample(serials, revoked)
    revoked_at = now - dt.timedelta(hours=1)
    with services.store.engine.begin() as conn:
        conn.execute(
            update(Certificate)
            .where(
                Certificate.issuer_name == ISSUING,
                Certificate.serial.in_([serial_hex(s) for s in revoked_serials]),
            )
            .values(status="revoked", revocation_reason="keyCompromise", revoked_at=revoked_at)
        )
    signed = ocsp.refresh_stale(services.store, services.keys, ISSUING, include_missing=True)
    out.write_text(
        json.dumps(
            {
                "serials": [str(s) for s in serials],
                "revoked": [str(s) for s in revoked_serials],
                "revoked_at": revoked_at.isoformat(),
                "presigned": signed,
            }
        )
    )


# --- openssl peer: its own CA, responder and index -----------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openssl bench"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def openssl_peer(
    directory: Path, serials: Sequence[int], revoked: set[int], revoked_at: dt.datetime
) -> dict[str, Path]:
    """A throwaway P-256 CA and P-256 delegated responder (in files) and an index.txt with
    the same serials and statuses as kakuin's certificates."""
    directory.mkdir()
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("openssl bench CA"))
        .issuer_name(_name("openssl bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    rsp_key = ec.generate_private_key(ec.SECP256R1())
    rsp = (
        x509.CertificateBuilder()
        .subject_name(_name("openssl bench OCSP responder"))
        .issuer_name(ca.subject)
        .public_key(rsp_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False)
        .add_extension(x509.OCSPNoCheck(), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca": directory / "ca.pem",
        "rsigner": directory / "responder.pem",
        "rkey": directory / "responder.key",
        "index": directory / "index.txt",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["rsigner"].write_bytes(rsp.public_bytes(serialization.Encoding.PEM))
    paths["rkey"].write_bytes(
        rsp_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    expiry = (now + dt.timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    when = revoked_at.astimezone(dt.UTC).strftime("%y%m%d%H%M%SZ")
    lines = []
    for i, serial in enumerate(serials):
        hex_serial = f"{serial:X}"
        hex_serial = "0" * (len(hex_serial) % 2) + hex_serial  # as BN_bn2hex writes it
        dn = f"/C=JP/O=openssl bench/CN=bench leaf {i}"
        if serial in revoked:
            lines.append(f"R\t{expiry}\t{when},keyCompromise\t{hex_serial}\tunknown\t{dn}")
        else:
            lines.append(f"V\t{expiry}\t\t{hex_serial}\tunknown\t{dn}")
    paths["index"].write_text("\n".join(lines) + "\n")
    (directory / "index.txt.attr").write_text("unique_subject = no\n")
    return paths


# --- requests ------------------------------------------------------------------------------------


def _key_bits(cert: x509.Certificate) -> bytes:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def ocsp_request(issuer: x509.Certificate, serial: int, nonce: bytes | None = None) -> bytes:
    """One SHA-1 CertID (what ``openssl ocsp`` and most clients send), no nonce by default."""
    name_hash = hashlib.sha1(issuer.subject.public_bytes()).digest()  # noqa: S324
    key_hash = hashlib.sha1(_key_bits(issuer)).digest()  # noqa: S324
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, serial, hashes.SHA1())  # noqa: S303
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def get_path(prefix: str, der: bytes) -> str:
    """RFC 6960 A.1: the URL-encoding of the base64 encoding of the DER request."""
    return prefix + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


@dataclass
class Target:
    name: str
    port: int
    post_path: str
    get_prefix: str
    issuer: x509.Certificate
    requests: list[bytes]
    proc: subprocess.Popen[bytes] | None = None
    start: Callable[[], subprocess.Popen[bytes]] | None = None
    """Set for openssl: a fresh server for every run (see ``run_wrk``)."""

    def path(self, method: str, der: bytes) -> str:
        return self.post_path if method == "POST" else get_path(self.get_prefix, der)


def fetch(target: Target, method: str, der: bytes) -> bytes:
    url = f"http://127.0.0.1:{target.port}{target.path(method, der)}"
    assert url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(
        url,
        data=der if method == "POST" else None,
        headers={"Content-Type": "application/ocsp-request"} if method == "POST" else {},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        if resp.status != 200:
            raise RuntimeError(f"{target.name} {method}: HTTP {resp.status}")
        body: bytes = resp.read()
        return body


def check_response(
    der: bytes, serial: int, revoked: bool, responder: x509.Certificate
) -> None:
    """The response is successful, signed by ``responder``, and has ``serial``'s status."""
    resp = x509_ocsp.load_der_ocsp_response(der)
    if resp.response_status is not x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise RuntimeError(f"{serial:x}: {resp.response_status}")
    key = responder.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert resp.signature_hash_algorithm is not None
    key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm))
    singles = [r for r in resp.responses if r.serial_number == serial]
    if not singles:
        raise RuntimeError(f"{serial:x}: no SingleResponse for it")
    for single in singles:
        want = x509_ocsp.OCSPCertStatus.REVOKED if revoked else x509_ocsp.OCSPCertStatus.GOOD
        if single.certificate_status is not want:
            raise RuntimeError(f"{serial:x}: {single.certificate_status}, expected {want}")
        if revoked and single.revocation_reason is not x509.ReasonFlags.key_compromise:
            raise RuntimeError(f"{serial:x}: reason {single.revocation_reason}")
        if single.next_update_utc is None:
            raise RuntimeError(f"{serial:x}: no nextUpdate")


def openssl_verify(
    der: bytes, work: Path, issuer: Path, serial: int, cafile: Path, untrusted: Path | None
) -> str:
    """``openssl ocsp -respin`` on a response: signature chain and the serial's status."""
    path = work / f"resp-{serial:x}-{time.monotonic_ns()}.der"
    path.write_bytes(der)
    cmd = ["openssl", "ocsp", "-respin", str(path), "-issuer", str(issuer),
           "-serial", f"0x{serial:x}", "-CAfile", str(cafile)]
    if untrusted is not None:
        cmd += ["-verify_other", str(untrusted)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    if out.returncode != 0 or "Response verify OK" not in text:
        raise RuntimeError(f"openssl ocsp -respin failed for {serial:x}:\n{text}")
    for word in ("good", "revoked", "unknown"):
        if f"0x{serial:x}: {word}" in text:
            return word
    raise RuntimeError(f"openssl printed no status for {serial:x}:\n{text}")


# --- wrk -----------------------------------------------------------------------------------------

WRK_LUA = """\
-- wrk's own resolve() opens and closes a test connection without a request, which leaves
-- openssl 3.0's responder spinning on it for good (openssl/openssl#31129): skip it.
wrk.resolve = function(host, service)
  wrk.addrs = wrk.lookup(host, service)
end
local reqs = {
%(reqs)s
}
local headers = %(headers)s
local method = "%(method)s"
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end
local formatted = {}
local n = #reqs
local i = 0
function init(args)
  for k, r in ipairs(reqs) do
    local h = {}
    for name, value in pairs(headers) do h[name] = value end
    formatted[k] = wrk.format(method, r[1], h, r[2])
  end
  i = ((thread_no or 1) - 1) * math.floor(n / 2) %% n
end
function request()
  i = i %% n + 1
  return formatted[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,' ..
    '"max_us":%%d,"mean_us":%%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def _lua_bytes(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" for b in data) + '"'


def wrk_script(target: Target, method: str, path: Path) -> Path:
    rows = []
    for der in target.requests:
        body = _lua_bytes(der) if method == "POST" else "nil"
        rows.append(f"  {{{_lua_bytes(target.path(method, der).encode())}, {body}}},")
    headers = '{["Content-Type"] = "application/ocsp-request"}' if method == "POST" else "{}"
    path.write_text(
        WRK_LUA % {"reqs": "\n".join(rows), "headers": headers, "method": method}
    )
    return path


def server_cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """user+system CPU of every live process in the server's process group (master and workers;
    not a session of its own: ``openssl ocsp -multi`` exits when it can't setpgid)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == proc.pid:  # process group: the server leads its own
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def run_wrk(
    target: Target, method: str, script: Path, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    if target.start is not None:
        # When wrk stops it closes connections it has just opened, before writing their
        # request; openssl 3.0's responder then spins on such a connection for good
        # (openssl/openssl#31129), so an openssl server serves one run only.
        stop(target.proc)
        target.proc = target.start()
        wait_ready(target)
    assert target.proc is not None
    cpu_before = server_cpu_seconds(target.proc)
    cmd = [
        "wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{round(seconds)}s",
        "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{target.port}/",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu = server_cpu_seconds(target.proc) - cpu_before
    if target.start is not None:
        stop(target.proc)
    else:
        try:  # still answering? (a wedged server would make the next figures meaningless)
            fetch(target, method, target.requests[0])
        except (OSError, urllib.error.URLError) as exc:
            raise RuntimeError(f"{target.name} stopped answering after a wrk run") from exc
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "timeout"))
    result["server_cpu_s"] = cpu
    result["cpu_us_per_response"] = 1e6 * cpu / max(1, result["requests"])
    return result


# --- servers -------------------------------------------------------------------------------------


def start_kakuin(
    home: Path, port: int, log: Path, source: Path | None = None
) -> subprocess.Popen[bytes]:
    """``kakuin serve``; with ``source``, the packages are imported from that tree instead
    (PYTHONPATH comes before the editable install; the working directory is not the repo)."""
    env = {**os.environ, **SERVER_ENV}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [str(KAKUIN), "--home", str(home), "serve", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "2"],
            env=env, stdout=fh, stderr=fh, process_group=0, cwd=log.parent,
        )
    return proc


def start_nginx(work: Path, port: int, upstream_port: int, log: Path) -> subprocess.Popen[bytes]:
    """nginx from the production template (scripts/cluster.py render), in the foreground."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_script", REPO / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    conf = cluster.render(work / "nginx", nodes=[f"127.0.0.1:{upstream_port}"],
                          http_listen=f"127.0.0.1:{port}")
    assert NGINX is not None
    with log.open("ab") as fh:
        return subprocess.Popen([NGINX, "-c", str(conf), "-e", str(log), "-g", "daemon off;"],
                                stdout=fh, stderr=fh, process_group=0)


def start_openssl(
    paths: dict[str, Path], port: int, multi: int, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        "openssl", "ocsp", "-index", str(paths["index"]), "-port", str(port),
        "-rsigner", str(paths["rsigner"]), "-rkey", str(paths["rkey"]), "-CA", str(paths["ca"]),
        "-nmin", "60", "-ignore_err",
    ]
    if multi > 1:
        cmd += ["-multi", str(multi)]
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=fh, process_group=0)


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own process group: the server and workers
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def floor_server(port: int, der_file: Path) -> None:
    """Runs in its own process (``--_floor-server``): gunicorn as ``kakuin serve`` runs it
    (2 sync workers), around a WSGI app that returns one fixed OCSP response with no OCSP,
    Flask or database work at all: the ceiling of any responder deployed this way."""
    from gunicorn.app.base import BaseApplication

    der = der_file.read_bytes()
    headers = [("Content-Type", "application/ocsp-response"), ("Content-Length", str(len(der)))]

    def wsgi(environ: Any, start_response: Any) -> Any:
        environ["wsgi.input"].read()
        start_response("200 OK", headers)
        return [der]

    options = {"bind": f"127.0.0.1:{port}", "workers": 2, "accesslog": None,
               "errorlog": "-", "loglevel": "warning", "timeout": 60}

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return wsgi

    Server().run()


def start_floor(port: int, der_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, __file__, "--_floor-server", str(port), str(der_file)],
            stdout=fh, stderr=fh, process_group=0,
        )


# --- profiling (bench only: kakuin's app in gunicorn with a cProfile wrapper per worker) --------


def profiled_server(home: Path, port: int, out_dir: Path) -> None:
    """Runs in its own process (``--_profile-server``): ``kakuin serve`` with each worker's
    WSGI calls under cProfile; each worker dumps its stats when it exits."""
    import cProfile

    from gunicorn.app.base import BaseApplication

    from kakuin.app import create_app, start_maintenance
    from kakuin.services import Services
    from kakuin.settings import load_settings

    settings = load_settings(home)
    svc = Services.build(settings)
    app = create_app(settings, svc)
    profiler = cProfile.Profile()

    def wsgi(environ: Any, start_response: Any) -> Any:
        profiler.enable()
        try:
            return list(app(environ, start_response))
        finally:
            profiler.disable()

    def post_fork(_server: Any, _worker: Any) -> None:
        svc.after_fork()
        start_maintenance(svc)

    def worker_exit(_server: Any, worker: Any) -> None:
        profiler.dump_stats(str(out_dir / f"worker-{worker.pid}.prof"))

    options = {
        "bind": f"127.0.0.1:{port}", "workers": 2, "accesslog": None, "errorlog": "-",
        "loglevel": settings.log_level.lower(), "timeout": 60, "post_fork": post_fork,
        "worker_exit": worker_exit,
    }

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return wsgi

    Server().run()


def profile_kakuin(
    home: Path, work: Path, kakuin: Target, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    out_dir = work / "profile"
    out_dir.mkdir()
    port = free_port()
    env = {**os.environ, **SERVER_ENV}
    with (work / "profile-server.log").open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--_profile-server", str(home), str(port), str(out_dir)],
            env=env, stdout=fh, stderr=fh, process_group=0,
        )
    target = Target("kakuin-profiled", port, kakuin.post_path, kakuin.get_prefix,
                    kakuin.issuer, kakuin.requests, proc)
    try:
        wait_ready(target)
        script = wrk_script(target, "POST", work / "profile-post.lua")
        run_wrk(target, "POST", script, 1, args)  # warm-up, not in the figures below
        for f in out_dir.glob("*.prof"):
            f.unlink()
        result = run_wrk(target, "POST", script, seconds, args)
    finally:
        stop(proc)
    files = sorted(str(f) for f in out_dir.glob("*.prof"))
    if not files:
        raise RuntimeError("profiled workers wrote no stats")
    stats = pstats.Stats(*files)
    total = stats.total_tt  # type: ignore[attr-defined]
    # Own time per bucket, by where the function lives.
    buckets: dict[str, float] = {}
    rows = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        buckets[_bucket(filename)] = buckets.get(_bucket(filename), 0.0) + tt
        rows.append((tt, ct, nc, f"{_short(filename)}:{line}({func})"))
    rows.sort(reverse=True)
    cumulative = sorted(
        ((ct, nc, f"{_short(fn)}:{ln}({fu})")
         for (fn, ln, fu), (_cc, nc, _tt, ct, _c) in stats.stats.items()),  # type: ignore[attr-defined]
        reverse=True,
    )
    # Requests the workers profiled (the warm-up run included: the stats are per worker life).
    n = max(1, max((nc for (fn, _ln, fu), (_cc, nc, *_rest) in stats.stats.items()  # type: ignore[attr-defined]
                    if fn.endswith("flask/app.py") and fu == "__call__"), default=0))
    return {
        "requests": n,
        "rps_profiled": result["rps"],
        "profiled_us_per_response": 1e6 * total / n,
        "buckets_us": {k: round(1e6 * v / n, 1) for k, v in
                       sorted(buckets.items(), key=lambda kv: -kv[1])},
        "top_own": [(round(1e6 * tt / n, 1), round(1e6 * ct / n, 1), nc, name)
                    for tt, ct, nc, name in rows[:25]],
        "top_cumulative": [(round(1e6 * ct / n, 1), nc, name) for ct, nc, name in cumulative[:30]],
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", str(REPO) + "/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def _bucket(filename: str) -> str:
    if "/ca/" in filename and "site-packages" not in filename:
        return "kakuin ca/ (ocsp.py, protocol_api.py, ...)"
    if "/kakuin/" in filename and "site-packages" not in filename:
        return "kakuin app (request hooks, JSON log)"
    for name, label in (
        ("sqlalchemy", "SQLAlchemy"),
        ("flask", "Flask"),
        ("werkzeug", "Werkzeug"),
        ("gunicorn", "gunicorn"),
        ("cryptography", "cryptography"),
    ):
        if f"/{name}/" in filename:
            return label
    if filename.startswith("~") or filename == "~":
        return "builtins (sqlite3, sockets, json, ...)"
    if "logging" in filename or "json" in filename:
        return "stdlib logging/json"
    return "other stdlib"


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class Cell:
    runs: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)

    def total(self, key: str) -> int:
        return int(sum(r[key] for r in self.runs))


def ocsp_environment() -> dict[str, Any]:
    env = environment(
        packages=("cryptography", "gunicorn", "flask", "sqlalchemy"),
        tools={"openssl": ["openssl", "version"], "wrk": ["wrk", "--version"]},
    )
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "ca", "kakuin"],
                           capture_output=True, text=True).stdout.strip()
    env["git"] = env["git"].removesuffix(" (dirty tree)") + (
        " (dirty ca/ or kakuin/)" if dirty else "")
    env["wrk"] = env["wrk"].split(" [")[0]
    env["loadavg"] = os.getloadavg()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--certs", type=int, default=100, help="certificates per server")
    p.add_argument("--revoked", type=float, default=0.1, help="fraction revoked")
    p.add_argument("--seconds", type=int, default=10, help="seconds per timed run")
    p.add_argument("--rounds", type=int, default=3, help="runs per peer and method")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--profile", type=int, default=0,
                   help="then profile kakuin's workers (cProfile) for this many seconds")
    p.add_argument("--baseline", type=Path, default=None, metavar="SRC",
                   help="also serve the same home from the packages (ca, kakuin, hsm, signing) "
                        "under SRC, e.g. a `git archive` of the base commit: peer "
                        "kakuin-baseline")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--_issue", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--_profile-server", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_floor-server", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._issue:
        home, count, revoked, out = args._issue
        issue_certificates(Path(home), int(count), int(revoked), Path(out))
        return 0
    if args._floor_server:
        floor_server(int(args._floor_server[0]), Path(args._floor_server[1]))
        return 0
    if args._profile_server:
        home, port, out = args._profile_server
        profiled_server(Path(home), int(port), Path(out))
        return 0

    isolate(argv)
    peers = [p for p in PEERS if (p != "kakuin-baseline" or args.baseline is not None)
             and (not p.startswith("kakuin-nginx") or NGINX is not None)]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found (Debian: apt-get install wrk)")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (
        lambda s: print(s, flush=True))
    env = ocsp_environment()
    work = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    home = work / "home"
    targets: dict[str, Target] = {}
    try:
        t0 = time.perf_counter()
        # The rate limit layer stays in the path, with a limit no run reaches: at the default
        # 100/s per address most answers would be tryLater (HTTP 200 too, so wrk counts them).
        home.mkdir(parents=True)
        (home / "kakuin.toml").write_text(f'[limits]\nocsp = "{NO_LIMIT}"\n')
        subprocess.run([str(KAKUIN), "--home", str(home), "init"], check=True,
                       env={**os.environ, **SERVER_ENV}, stdout=subprocess.DEVNULL)
        issued = work / "issued.json"
        n_revoked = round(args.certs * args.revoked)
        subprocess.run(
            [sys.executable, __file__, "--_issue", str(home), str(args.certs), str(n_revoked),
             str(issued)],
            check=True, env={**os.environ, **SERVER_ENV},
        )
        info = json.loads(issued.read_text())
        serials = [int(s) for s in info["serials"]]
        revoked = {int(s) for s in info["revoked"]}
        log(f"kakuin home ready: {len(serials)} certificates, {len(revoked)} revoked, "
            f"{info['presigned']} responses pre-signed ({time.perf_counter() - t0:.1f} s)")
        pki = home / "pki"
        k_issuer = x509.load_pem_x509_certificate((pki / f"{ISSUING}.pem").read_bytes())
        k_responder = x509.load_pem_x509_certificate(
            (pki / f"{ISSUING}-ocsp.pem").read_bytes())
        peer = openssl_peer(work / "openssl", serials, revoked,
                            dt.datetime.fromisoformat(info["revoked_at"]))
        o_issuer = x509.load_pem_x509_certificate(peer["ca"].read_bytes())
        o_responder = x509.load_pem_x509_certificate(peer["rsigner"].read_bytes())

        k_requests = [ocsp_request(k_issuer, s) for s in serials]
        o_requests = [ocsp_request(o_issuer, s) for s in serials]
        targets["kakuin"] = Target("kakuin", free_port(), "/ocsp", "/ocsp/", k_issuer,
                                   k_requests)
        targets["openssl-multi2"] = Target("openssl-multi2", free_port(), "/", "/", o_issuer,
                                           o_requests)
        targets["openssl"] = Target("openssl", free_port(), "/", "/", o_issuer, o_requests)
        targets["kakuin"].proc = start_kakuin(home, targets["kakuin"].port, work / "kakuin.log")
        if "kakuin-nginx" in peers:
            front = Target("kakuin-nginx", free_port(), "/ocsp", "/ocsp/", k_issuer, k_requests)
            front.proc = start_nginx(work, front.port, targets["kakuin"].port,
                                     work / "nginx.log")
            targets["kakuin-nginx"] = front
            # Many distinct nonces per certificate: real nonces are unique, and wrk's connections
            # must not send one body at once (the front's cache lock would queue the copies).
            targets["kakuin-nginx-nonce"] = Target(
                "kakuin-nginx-nonce", front.port, "/ocsp", "/ocsp/", k_issuer,
                [ocsp_request(k_issuer, s, os.urandom(16)) for _ in range(NONCES_PER_CERT)
                 for s in serials], proc=front.proc)
        if args.baseline is not None:
            base = Target("kakuin-baseline", free_port(), "/ocsp", "/ocsp/", k_issuer,
                          k_requests)
            base.proc = start_kakuin(home, base.port, work / "kakuin-baseline.log",
                                     args.baseline.resolve())
            targets["kakuin-baseline"] = base
        for name, multi in (("openssl-multi2", 2), ("openssl", 1)):
            t = targets[name]
            t.start = functools.partial(start_openssl, peer, t.port, multi, work / f"{name}.log")
            t.proc = t.start()
        for target in targets.values():
            wait_ready(target)

        # Correctness: every certificate, both methods, every server; a sample through openssl.
        sizes: dict[str, int] = {}
        responders = {"kakuin": k_responder, "kakuin-baseline": k_responder,
                      "kakuin-nginx": k_responder, "kakuin-nginx-nonce": k_responder,
                      "openssl-multi2": o_responder, "openssl": o_responder}
        for name, target in targets.items():
            for method in METHODS:
                for serial, der in zip(serials, target.requests[:len(serials)], strict=True):
                    body = fetch(target, method, der)
                    check_response(body, serial, serial in revoked, responders[name])
                    sizes[name] = len(body)
        sample = [s for s in serials if s not in revoked][:2] + sorted(revoked)[:2]
        verified = []
        for name, target in targets.items():
            if name == "kakuin-nginx-nonce":  # the same server and responder as kakuin-nginx
                continue
            for serial in sample:
                body = fetch(target, "GET", target.requests[serials.index(serial)])
                if name.startswith("kakuin"):
                    word = openssl_verify(body, work, pki / f"{ISSUING}.pem", serial,
                                          pki / "kakuin-root-ca.pem", pki / f"{ISSUING}.pem")
                else:
                    word = openssl_verify(body, work, peer["ca"], serial, peer["ca"], None)
                want = "revoked" if serial in revoked else "good"
                if word != want:
                    raise RuntimeError(f"{name}: openssl says {serial:x} is {word}, not {want}")
                verified.append(f"{name} {serial:x} {word}")
        log(f"checked {len(serials)} certificates x {len(METHODS)} methods x {len(targets)} "
            f"servers; openssl -respin verified {len(verified)} (good and revoked)")

        # The reference: gunicorn serving one canned kakuin response, no OCSP logic at all.
        canned = work / "canned.der"
        canned.write_bytes(fetch(targets["kakuin"], "POST", k_requests[0]))
        floor = Target("gunicorn-floor", free_port(), "/ocsp", "/ocsp/", k_issuer, k_requests)
        floor.proc = start_floor(floor.port, canned, work / "floor.log")
        wait_ready(floor)
        targets["gunicorn-floor"] = floor
        sizes["gunicorn-floor"] = len(canned.read_bytes())

        scripts = {
            (name, method): wrk_script(targets[name], method, work / f"{name}-{method}.lua")
            for name in peers
            for method in METHODS
        }
        cells: dict[tuple[str, str], Cell] = {key: Cell() for key in scripts}
        for key, script in scripts.items():  # warm-up (workers load the responder, caches)
            run_wrk(targets[key[0]], key[1], script, WARMUP_SECONDS, args)
        order = list(scripts)
        for r in range(args.rounds):
            for key in order if r % 2 == 0 else list(reversed(order)):
                result = run_wrk(targets[key[0]], key[1], scripts[key], args.seconds, args)
                cells[key].runs.append(result)
                log(f"round {r + 1}/{args.rounds} {key[0]:15} {key[1]:4} "
                    f"{result['rps']:8.0f}/s  p50 {result['p50_us'] / 1000:6.2f} ms  "
                    f"p99 {result['p99_us'] / 1000:6.2f} ms  non-2xx {result['status']}  "
                    f"errors {result['errors']}  server CPU "
                    f"{result['cpu_us_per_response']:.0f} us/resp")
        env["loadavg_end"] = os.getloadavg()
        profile = None
        if args.profile:
            stop(targets["kakuin"].proc)  # one kakuin at a time on the token
            profile = profile_kakuin(home, work, targets["kakuin"], args.profile, args)
    finally:
        for t in targets.values():
            stop(t.proc)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    summary: dict[str, Any] = {}
    for (name, method), cell in cells.items():
        summary[f"{name} {method}"] = {
            "rps": round(cell.median("rps"), 1),
            "rps_by_round": [round(r["rps"], 1) for r in cell.runs],
            "p50_ms": round(cell.median("p50_us") / 1000, 2),
            "p99_ms": round(cell.median("p99_us") / 1000, 2),
            "non_2xx": cell.total("status"),
            "errors": cell.total("errors"),
            "requests": cell.total("requests"),
            "server_cpu_us_per_response": round(cell.median("cpu_us_per_response"), 1),
            "response_bytes": sizes[name],
        }
    ratios = {
        f"kakuin/{peer_name} {method}": round(
            summary[f"kakuin {method}"]["rps"] / summary[f"{peer_name} {method}"]["rps"], 2)
        for peer_name in ("openssl-multi2", "openssl", "gunicorn-floor", "kakuin-baseline")
        if peer_name in peers
        for method in METHODS
    }
    for method in METHODS:
        for front_name in ("kakuin-nginx", "kakuin-nginx-nonce"):
            if front_name not in peers:
                continue
            ratios[f"{front_name}/openssl {method}"] = round(
                summary[f"{front_name} {method}"]["rps"] / summary[f"openssl {method}"]["rps"], 2)
            # The cores are shared: a round's peers ran back to back, so their ratio is the
            # steadier figure; the median over rounds.
            ratios[f"{front_name}/openssl {method} (median of per-round ratios)"] = round(
                statistics.median(
                    a["rps"] / b["rps"] for a, b in zip(
                        cells[(front_name, method)].runs, cells[("openssl", method)].runs,
                        strict=True)), 2)
        ratios[f"gunicorn-floor/openssl-multi2 {method}"] = round(
            summary[f"gunicorn-floor {method}"]["rps"]
            / summary[f"openssl-multi2 {method}"]["rps"], 2)
    result = {"environment": env, "args": {k: v for k, v in vars(args).items()
                                            if not k.startswith("_")},
              "summary": summary, "ratios": ratios, "verified": verified, "profile": profile}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"\n{env['date']}  git {env['git']}  {env['cpu']} x{env['nproc']}  load "
          f"{', '.join(f'{x:.2f}' for x in env['loadavg'])} at start, "
          f"{', '.join(f'{x:.2f}' for x in env['loadavg_end'])} at the end")
    print(f"Python {env['python']}, cryptography {env['cryptography']}, gunicorn "
          f"{env['gunicorn']}, Flask {env['flask']}, SQLAlchemy {env['sqlalchemy']}, "
          f"{env['openssl']}, {env['wrk']}")
    print(f"{args.certs} certificates ({n_revoked} revoked), wrk -t{args.threads} "
          f"-c{args.connections}, {args.rounds} x {args.seconds:g} s per cell (medians)\n")
    print("| server | method | responses/s | p50 ms | p99 ms | non-2xx | errors | "
          "server CPU µs/resp | bytes |")
    print("|:--|:--|--:|--:|--:|--:|--:|--:|--:|")
    for name in peers:
        for method in METHODS:
            s = summary[f"{name} {method}"]
            print(f"| {name} | {method} | {s['rps']:.0f} | {s['p50_ms']:.2f} | "
                  f"{s['p99_ms']:.2f} | {s['non_2xx']} | {s['errors']} | "
                  f"{s['server_cpu_us_per_response']:.0f} | {s['response_bytes']} |")
    print()
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.2f}")
    if profile is not None:
        print(f"\ncProfile inside the WSGI call of kakuin's 2 workers, POST, "
              f"{profile['requests']} responses (wrk {profile['rps_profiled']:.0f}/s under the "
              f"profiler); {profile['profiled_us_per_response']:.0f} µs profiled per response "
              "(own time by bucket):")
        for bucket, us in profile["buckets_us"].items():
            print(f"  {us:8.1f} µs  {bucket}")
        print("\ntop functions by own time (µs/resp own, cumulative, calls):")
        for tt, ct, nc, name in profile["top_own"]:
            print(f"  {tt:8.1f} {ct:8.1f} {nc:8d}  {name}")
        print("\ntop functions by cumulative time (µs/resp, calls):")
        for ct, nc, name in profile["top_cumulative"]:
            print(f"  {ct:8.1f} {nc:8d}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
