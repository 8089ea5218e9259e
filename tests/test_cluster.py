"""The local cluster end to end: nginx in front of 3 `kakuin serve` nodes on one PostgreSQL
database and one SoftHSM token, started and stopped by scripts/cluster.py (as `make cluster`).

Through the front: issuance, sealing, TSA and revocation at once, spread over the nodes, with
one node SIGKILLed (its process group, by the pid the script recorded) mid-load. Afterwards:
every accepted request is final, no duplicate serial or CRL number, the audit chain verifies,
the killed node comes back (scripts/cluster.py start-node), a revoked certificate is revoked in
OCSP on every node at once and through the front within the documented bound, and the
cluster's scheduler ran at most once per period.
Lean on purpose (the test machine has 2 cores): few requests, 1 worker per node.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import tsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from sqlalchemy import func, select

from ca import clients, registry
from ca.models import Certificate, Crl, SealRequest, TsaSerial
from ca.scheduler import runs
from ca.store import Store, upgrade
from kakuin.services import Services
from kakuin.settings import load_settings
from tests.cafixtures import _copy_ca_rows
from tests.dbutil import database

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "cluster.py"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
INTERVAL = 2.0  # maintenance period (s): short so several periods pass during the test
CACHE_SECONDS = 3  # the front's bound on a cached status object (config/nginx)
BOUND = CACHE_SECONDS + 2.0  # documented staleness through the front: cache + one refetch


@dataclass
class Cluster:
    front: str
    nodes: list[str]
    home: Path
    url: str
    store: Store
    operator: str
    officer: str
    schools: list[tuple[int, str]]  # (organization id, school-system token)
    pids: dict[str, int]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _http(method: str, url: str, token: str | None = None, body: Any = None,
          raw: bytes | None = None, ctype: str = "application/json",
          ) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": ctype} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except OSError as exc:  # connection reset by the killed node, seen through the front
        return 0, {}, repr(exc).encode()


@pytest.fixture(scope="module")
def cluster(services: Services, home: Path, tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[Cluster]:
    if NGINX is None:
        pytest.skip("nginx is not installed (make test installs it: apt-get install nginx)")
    tmp = tmp_path_factory.mktemp("cluster")
    with database("postgresql", tmp) as url:  # skips with the reason without PostgreSQL
        node_home = tmp / "home"
        shutil.copytree(home, node_home, ignore=shutil.ignore_patterns("kakuin.sqlite3*"))
        upgrade(url)
        store = Store(url)
        _copy_ca_rows(services.store, store)
        with store.session() as s:
            op = registry.add_operator(s, name_ja="クラスタ運用者", actor="test")
            board = registry.add_board(s, name_ja="クラスタ市教育委員会",
                                       local_gov_code="131016", actor="test")
            school_orgs = [
                registry.add_school(s, name_ja=f"クラスタ市立第{i}小学校",
                                    school_code=f"B1132{i:07d}0", board_id=board.id,
                                    actor="test")
                for i in range(1, 8)
            ]
            _, operator = clients.create_client(s, organization_id=op.id, role="ca-operator",
                                                name="ops", actor="test")
            _, officer = clients.create_client(s, organization_id=board.id,
                                               role="board-officer", name="o", actor="test")
            schools = [
                (org.id, clients.create_client(s, organization_id=org.id, role="school-system",
                                               name="s", actor="test")[1])
                for org in school_orgs
            ]
        front_port, *node_ports = _free_ports(4)
        env = {**os.environ, "KAKUIN_LOG_LEVEL": "WARNING"}
        started = subprocess.run(
            [sys.executable, str(SCRIPT), "start", "--home", str(node_home),
             "--front-port", str(front_port), "--nodes", ",".join(map(str, node_ports)),
             "--database-url", url, "--no-create-db", "--workers", "1",
             "--maintenance-interval", str(INTERVAL), "--cache-seconds", str(CACHE_SECONDS)],
            env=env, capture_output=True, text=True, timeout=300)
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            pids = json.loads(started.stdout.strip().splitlines()[-1])["pids"]
            yield Cluster(f"http://127.0.0.1:{front_port}",
                          [f"http://127.0.0.1:{p}" for p in node_ports], node_home, url, store,
                          operator, officer, schools, pids)
        finally:
            stopped = subprocess.run([sys.executable, str(SCRIPT), "stop", "--home",
                                      str(node_home)], capture_output=True, text=True,
                                     timeout=120)
            store.dispose(close=True)
            assert stopped.returncode == 0, stopped.stderr
            assert not list((node_home / "cluster").glob("*.pid"))


def _issue(c: Cluster, school_token: str) -> tuple[int, dict[str, Any] | None]:
    """Seal request + approval through the front; (status of the approval, its body)."""
    code, _, raw = _http("POST", f"{c.front}/api/v1/seal-requests", school_token,
                         {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    if code != 201:
        return code, None
    req = json.loads(raw)
    code, _, raw = _http("POST", f"{c.front}/api/v1/seal-requests/{req['id']}/approve",
                         c.officer)
    return code, (json.loads(raw) if code == 200 else {"id": req["id"]})


def _tsa_query() -> bytes:
    return bytes(tsp.TimeStampReq({
        "version": "v1",
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": hashlib.sha256(secrets.token_bytes(16)).digest()},
        "nonce": secrets.randbits(63), "cert_req": False,
    }).dump())


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate,
                  nonce: bytes | None = None) -> bytes:
    """One SHA-1 CertID (RFC 5019, as relying parties send it), with a nonce if given."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        cert, issuer, hashes.SHA1())  # noqa: S303 (RFC 5019 CertID)
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def _ocsp_post(base: str, der: bytes) -> tuple[ocsp.OCSPResponse, str]:
    """RFC 6960 A.1 POST: the response and the front's X-Cache-Status ('' from a node)."""
    code, headers, raw = _http("POST", f"{base}/ocsp", raw=der, ctype="application/ocsp-request")
    assert code == 200, raw
    return ocsp.load_der_ocsp_response(raw), headers.get("X-Cache-Status", "")


def _ocsp_status(base: str, cert: x509.Certificate, issuer: x509.Certificate,
                 method: str = "GET") -> ocsp.OCSPCertStatus:
    """The certificate's status asked by RFC 5019 GET or by POST (both cached at the front)."""
    der = _ocsp_request(cert, issuer)
    if method == "POST":
        response = _ocsp_post(base, der)[0]
    else:
        path = urllib.parse.quote(base64.b64encode(der).decode(), safe="")
        code, _, raw = _http("GET", f"{base}/ocsp/{path}")
        assert code == 200, raw
        response = ocsp.load_der_ocsp_response(raw)
    mine = [r.certificate_status for r in response.responses
            if r.serial_number == cert.serial_number]
    assert len(set(mine)) == 1, mine
    return mine[0]


def _wait(predicate: Callable[[], bool], seconds: float, step: float = 0.2) -> float:
    """Seconds until ``predicate`` held; fails after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(step)
    return time.monotonic() - start


def test_cluster_under_load_with_a_node_killed(cluster: Cluster) -> None:
    c = cluster
    settings = load_settings(c.home)
    issuer = x509.load_pem_x509_certificate((settings.pki_dir / "kakuin-issuing-ca.pem")
                                            .read_bytes())
    for node in c.nodes:  # every node and the front serve
        assert _http("GET", f"{node}/healthz")[0] == 200
    # Before the load: the sealing school's seal, and certificates to revoke under load.
    sealer = c.schools[0][1]
    code, body = _issue(c, sealer)
    assert code == 200, body
    victims = []
    for _, token in c.schools[1:3]:
        code, body = _issue(c, token)
        assert code == 200 and body is not None, body
        victims.append(body["certificate"]["serial"])

    # The load: issuance, JSON sealing (B-T: timestamp by our TSA), TSA and revocations.
    tasks: list[tuple[str, Callable[[], Any]]] = []
    for _, token in c.schools[3:]:
        tasks.append(("issue", lambda t=token: _issue(c, t)))
    for serial in victims:
        tasks.append(("revoke", lambda s=serial: (_http(
            "POST", f"{c.front}/api/v1/certificates/{s}/revoke", c.operator,
            {"reason": "keyCompromise"})[0], s)))
    for i in range(6):
        record = json.dumps({"n": i, "氏名": f"生徒{i}"}, ensure_ascii=False).encode()
        tasks.append(("seal", lambda r=record: _http(
            "POST", f"{c.front}/api/v1/seal/json?level=B-T", sealer, raw=r)[:1]))
    for _ in range(12):
        q = _tsa_query()
        tasks.append(("tsa", lambda q=q: _http("POST", f"{c.front}/tsa", raw=q,
                                               ctype="application/timestamp-query")))
    order = [tasks[i] for i in sorted(range(len(tasks)), key=lambda i: (i * 7) % len(tasks))]
    killed = threading.Event()
    done = Counter[str]()
    lock = threading.Lock()

    def run(kind: str, fn: Callable[[], Any]) -> tuple[str, Any]:
        result = fn()
        with lock:
            done[kind] += 1
            if sum(done.values()) == len(order) // 3 and not killed.is_set():
                os.killpg(c.pids["node2"], signal.SIGKILL)  # by the pid the script recorded
                killed.set()
        return kind, result

    started = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(lambda t: run(*t), order))
    elapsed = time.monotonic() - started
    assert killed.is_set()
    killed_node = c.nodes[1]
    assert _http("GET", f"{killed_node}/healthz")[0] == 0  # really gone

    statuses = Counter((kind, (r[0] if isinstance(r, tuple) else r)) for kind, r in results)
    failed = {k: n for k, n in statuses.items() if not 200 <= k[1] < 300}
    print(f"\nload: {len(order)} requests in {elapsed:.1f} s, outcomes {dict(statuses)}")
    # Only API requests in flight on the killed node may fail, and only as gateway errors;
    # the front retries timestamp (and OCSP) POSTs on another node.
    assert sum(failed.values()) <= 4, failed
    assert all(code in (0, 502, 503, 504) and kind in ("issue", "revoke", "seal")
               for kind, code in failed), failed

    upstreams = (c.home / "cluster" / "nginx-access.log").read_text()
    for node in c.nodes:
        assert f"up={node.removeprefix('http://')}" in upstreams  # spread over all 3 nodes

    # Every accepted request is final in the database.
    tsa_serials = [tsp.TimeStampResp.load(r[2])["time_stamp_token"]["content"]
                   ["encap_content_info"]["content"].parsed["serial_number"].native
                   for kind, r in results if kind == "tsa" and r[0] == 200]
    with c.store.session() as s:
        for kind, r in results:
            if kind == "issue" and r[0] == 200:
                row = s.get(SealRequest, r[1]["id"])
                assert row is not None and row.status == "issued"
            if kind == "revoke" and r[0] == 200:
                row = s.scalars(select(Certificate).where(Certificate.serial == r[1])).one()
                assert row.status == "revoked"
        # What the killed node left: requests it never answered (a 502 at the front).
        left = Counter(s.scalars(select(Certificate.status)
                                 .where(Certificate.status.in_(("reserved", "linted")))))
        print(f"left unfinished by the killed node (reconciler's work): {dict(left)}")
        assert sum(left.values()) <= statuses[("issue", 502)] + statuses[("issue", 0)]
        stored = set(s.scalars(select(TsaSerial.serial)))
        assert {format(n, "x") for n in tsa_serials} <= stored
        # No duplicates (the database would refuse them; this shows none were attempted
        # around the checks either) and CRL numbers strictly increasing per issuer.
        dup_certs = s.execute(select(Certificate.issuer_name, Certificate.serial)
                              .group_by(Certificate.issuer_name, Certificate.serial)
                              .having(func.count() > 1)).all()
        assert dup_certs == []
        for issuer_name in set(s.scalars(select(Crl.issuer_name))):
            numbers = list(s.scalars(select(Crl.number).where(Crl.issuer_name == issuer_name)
                                     .order_by(Crl.id)))
            assert numbers == sorted(set(numbers)), (issuer_name, numbers)
        assert len(stored) == s.scalar(select(func.count()).select_from(TsaSerial))

    audit = subprocess.run([sys.executable, "-m", "kakuin", "--home", str(c.home), "audit",
                            "verify"], env={**os.environ, "KAKUIN_DATABASE_URL": c.url},
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # The killed node comes back (same settings, by the script) and serves again.
    back = subprocess.run([sys.executable, str(SCRIPT), "start-node", "--home", str(c.home),
                           "--index", "2"], capture_output=True, text=True, timeout=180)
    assert back.returncode == 0, back.stdout + back.stderr
    assert _http("GET", f"{killed_node}/healthz")[0] == 200

    # Revocation seen in OCSP: on every node at once, through the front within BOUND.
    code, body = _issue(c, c.schools[1][1])  # school 1's victim was revoked: a new seal
    assert code == 200 and body is not None, body
    cert = x509.load_pem_x509_certificate(body["certificate"]["pem"].encode())
    for _ in range(2):  # the front now caches "good", for GET and for nonce-less POST
        for method in ("GET", "POST"):
            assert _ocsp_status(c.front, cert, issuer, method) == ocsp.OCSPCertStatus.GOOD
    assert _ocsp_post(c.front, _ocsp_request(cert, issuer))[1] == "HIT"
    code, _, raw = _http("POST", f"{c.front}/api/v1/certificates/{body['certificate']['serial']}"
                         "/revoke", c.operator, {"reason": "keyCompromise"})
    assert code == 200, raw
    for node in c.nodes:
        for method in ("GET", "POST"):
            assert _ocsp_status(node, cert, issuer, method) == ocsp.OCSPCertStatus.REVOKED
    # Both methods within BOUND of the revocation (one clock for both: each is asked every step).
    took = _wait(lambda: all(_ocsp_status(c.front, cert, issuer, m) == ocsp.OCSPCertStatus.REVOKED
                             for m in ("GET", "POST")), BOUND)
    print(f"GET and POST: revoked through the front after {took:.2f} s (bound {BOUND} s)")
    # A nonce is answered fresh every time, never from the front's cache: the same request
    # (same nonce) twice reaches a node twice, and each answer echoes the nonce.
    nonce = secrets.token_bytes(16)
    for _ in range(2):
        response, cache = _ocsp_post(c.front, _ocsp_request(cert, issuer, nonce))
        assert cache != "HIT", cache
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    path = urllib.parse.quote(base64.b64encode(_ocsp_request(cert, issuer, nonce)).decode(),
                              safe="")
    for _ in range(2):  # GET with a nonce: not cached either
        code, headers, raw = _http("GET", f"{c.front}/ocsp/{path}")
        assert code == 200 and headers.get("X-Cache-Status") != "HIT", headers
        response = ocsp.load_der_ocsp_response(raw)
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    # Garbage is a malformedRequest, never cached either (kakuin marks it no-store).
    for _ in range(2):
        code, headers, raw = _http("POST", f"{c.front}/ocsp", raw=b"\x30\x00",
                                   ctype="application/ocsp-request")
        assert code == 200 and headers.get("X-Cache-Status") != "HIT", headers
        assert (ocsp.load_der_ocsp_response(raw).response_status
                == ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    # The scheduler: never twice for one period, across all workers of all nodes.
    recorded = runs(c.store)
    per_period = Counter(r.period_start_ms for r in recorded)
    assert per_period and max(per_period.values()) == 1, per_period
    assert len({r.holder for r in recorded}) >= 1
    assert sum(r.outcome == "running" for r in recorded) <= 1  # only the killed node's
    assert len(per_period) >= 3, per_period
    print(f"scheduler: {len(recorded)} runs in {len(per_period)} periods of {INTERVAL} s by"
          f" {len({r.holder for r in recorded})} workers")
