"""Sealing throughput: kakuin against pyHanko as shipped, on the same SoftHSM key.

PDF (``measure_pdf``): a 3-page A4 指導要録 (guidance record) with Japanese text
(``tests/fixtures_pdf.guidance_record``, 39 KB) sealed again and again. Peers, in the same run,
taking turns round by round (order reversed every other round) so drift on a shared machine
hits them alike:

- ``kakuin B-B`` / ``B-T`` / ``B-LTA``: over HTTP (``POST /api/v1/seal/pdf?level=...``,
  multipart field ``file``, the school system's token; the app in this process under werkzeug)
  when the endpoint exists, else ``signing.pdf.seal_pdf()`` called in-process (the report says
  which). Invisible seals, as the peer makes; B-T/B-LTA timestamps come from kakuin's TSA
  in-process (``LocalTimeStamper``), B-LTA's revocation data from ``validation_material()``
  made once, as a server caches it until ``fresh_until``.
- ``kakuin B-B visible``: the same with the 角印 stamp drawn (font subset cached).
- ``kakuin B-B in-process``, ``kakuin B-LTA in-process`` (when HTTP is measured):
  ``seal_pdf()`` alone: no HTTP, authorisation, database, audit, and (B-LTA) revocation
  data made once instead of per request.
- ``pyHanko B-B``: ``pyhanko.sign.signers.sign_pdf`` with default settings and pyHanko's own
  ``PKCS11Signer(use_raw_mechanism=True)`` on the same token and key (a session of this
  process, already logged in), no service: what a vendor gets from pyHanko out of the box.

Setup (untimed): a temporary home after the real key ceremony (``kakuin --home <tmp> init``),
a board and school with API tokens, a hosted P-256 e-seal requested and approved over HTTP,
CRLs published. The first output of each peer is checked with pyHanko's validator (intact,
valid, trusted; timestamp and DSS where the level has them). ``--profile N`` seals N
documents at B-B in-process under cProfile to say where the time goes.

    .venv/bin/python bench/seal.py [--count 200] [--rounds 10] [--profile 50] [--json]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import http.client
import io
import json
import logging
import os
import platform
import pstats
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.fixtures_pdf (the guidance record)

from asn1crypto import x509 as asn1_x509  # noqa: E402
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter  # noqa: E402
from pyhanko.pdf_utils.reader import PdfFileReader  # noqa: E402
from pyhanko.sign import signers  # noqa: E402
from pyhanko.sign import validation as pv  # noqa: E402

from ca import clients, crl, registry, status  # noqa: E402
from kakuin.app import create_app  # noqa: E402
from kakuin.services import Services  # noqa: E402
from kakuin.settings import load_settings  # noqa: E402
from signing.pdf import SealOptions, ValidationMaterial, seal_pdf, validation_material  # noqa: E402
from signing.tsa import ETSI_BTSP_POLICY, LocalTimeStamper, TimeStampAuthority  # noqa: E402
from tests.fixtures_pdf import guidance_record  # noqa: E402

KAKUIN = Path(sys.executable).parent / "kakuin"
BASE_URL = "http://pki.example.com"  # certificates name a public host; nothing is fetched
WARMUP = 3
PDF_ENDPOINT = "/api/v1/seal/pdf"


# -- shared setup -------------------------------------------------------------------------------


class InProcessServer:
    """werkzeug on loopback in a thread (one request at a time, as one gunicorn worker)."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=False)
        self.port: int = self.server.server_port
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self._thread.join()
        self.server.server_close()


def call(port: int, method: str, path: str, token: str, body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Bench:
    """Everything the measurements share: one home, one HSM session, one sealing key."""

    tmp: Path
    services: Services
    server: InProcessServer
    school_token: str
    credential: status.Credential
    timestamper: LocalTimeStamper
    material: ValidationMaterial

    def close(self, keep: bool) -> None:
        self.server.stop()
        self.services.close()
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


def setup(log: Callable[[str], None]) -> Bench:
    tmp = Path(tempfile.mkdtemp(prefix="kakuin-bench-seal-"))
    home = tmp / "home"
    home.mkdir(mode=0o700)
    (home / "kakuin.toml").write_text(f'[server]\nbase_url = "{BASE_URL}"\n')
    log(f"key ceremony: kakuin --home {home} init")
    subprocess.run([str(KAKUIN), "--home", str(home), "init"], check=True,
                   capture_output=True, env=_child_env())
    settings = load_settings(home)
    svc = Services.build(settings)
    app = create_app(settings, svc)
    request_log = (home / "requests.log").open("a")
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler):
            h.setStream(request_log)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
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
        school_id = school.id
    server = InProcessServer(app)
    log("hosted P-256 e-seal: request (school system) and approval (board) over HTTP")
    code, body = call(server.port, "POST", "/api/v1/seal-requests", system,
                      json.dumps({"key": {"hosted": True, "algorithm": "ECDSA-P256"}}).encode())
    if code != 201:
        raise RuntimeError(f"seal request: {code} {body[:300]!r}")
    rid = json.loads(body)["id"]
    code, body = call(server.port, "POST", f"/api/v1/seal-requests/{rid}/approve", officer)
    if code != 200:
        raise RuntimeError(f"approval: {code} {body[:300]!r}")
    authorities = crl.load_authorities(svc.store, svc.keys, root_name=settings.ca.root_name,
                                       issuing_name=settings.ca.issuing_name)
    crl.publish_due(svc.store, authorities=authorities)
    credential = status.seal_credential(svc.store, school_id)
    tsa = TimeStampAuthority(svc.store, svc.keys, policy_oid=ETSI_BTSP_POLICY)
    material = validation_material(svc.store, svc.keys, credential,
                                   crl_issuers=[settings.ca.root_name])
    return Bench(tmp, svc, server, system, credential, LocalTimeStamper(tsa), material)


# -- statistics ---------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    seconds: list[float] = field(default_factory=list)
    by_round: list[float] = field(default_factory=list)  # documents/s in each round
    sizes: list[int] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        return {
            "documents": len(self.seconds),
            "per_s": round(self.per_s, 2),
            "ms_mean": round(1000 * statistics.fmean(self.seconds), 2),
            "ms_median": round(1000 * statistics.median(self.seconds), 2),
            "ms_p95": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "per_s_by_round": [round(x, 1) for x in self.by_round],
            "output_bytes": round(statistics.fmean(self.sizes)),
        }


def run_rounds(peers: dict[str, Callable[[], bytes]], count: int, rounds: int,
               log: Callable[[str], None]) -> tuple[dict[str, Peer], dict[str, bytes]]:
    """Each peer seals ``count`` documents, in ``rounds`` alternating turns; returns the
    statistics and each peer's first output (for checking)."""
    results = {name: Peer(name) for name in peers}
    first: dict[str, bytes] = {}
    for name, fn in peers.items():
        for _ in range(WARMUP):
            first.setdefault(name, fn())
    per_round = [count // rounds + (1 if r < count % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(per_round):
        order = list(peers) if r % 2 == 0 else list(reversed(peers))
        for name in order:
            fn, res = peers[name], results[name]
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                out = fn()
                res.seconds.append(time.perf_counter() - t0)
                res.sizes.append(len(out))
            res.by_round.append(n / (time.perf_counter() - start))
        log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{name} {results[name].by_round[-1]:.1f}/s" for name in peers))
    return results, first


# -- PDF ----------------------------------------------------------------------------------------


def multipart(field_name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
        f"filename=\"{filename}\"\r\nContent-Type: application/pdf\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def pdf_endpoint_exists(bench: Bench, pdf: bytes) -> bool:
    body, ctype = multipart("file", "probe.pdf", pdf)
    code, _ = call(bench.server.port, "POST", f"{PDF_ENDPOINT}?level=B-B", bench.school_token,
                   body, ctype)
    return code == 200


def kakuin_http(bench: Bench, pdf: bytes, level: str, visible: bool) -> Callable[[], bytes]:
    query = f"?level={level}" + ("" if visible else "&visible=false")

    def seal() -> bytes:
        body, ctype = multipart("file", "shidou-youroku.pdf", pdf)
        code, out = call(bench.server.port, "POST", PDF_ENDPOINT + query, bench.school_token,
                         body, ctype)
        if code != 200:
            raise RuntimeError(f"{PDF_ENDPOINT}{query}: {code} {out[:300]!r}")
        return out

    return seal


def kakuin_inprocess(bench: Bench, pdf: bytes, level: str, visible: bool) -> Callable[[], bytes]:
    options = SealOptions(level=level, visible=visible, verify_url=BASE_URL + "/verify")

    def seal() -> bytes:
        return seal_pdf(pdf, bench.credential, bench.services.keys,
                        timestamper=bench.timestamper, validation=bench.material,
                        options=options).pdf

    return seal


def pyhanko_peer(bench: Bench, pdf: bytes) -> Callable[[], bytes]:
    """pyHanko's PKCS11Signer on the same token and key, default sign_pdf settings."""
    import pkcs11
    from pyhanko.sign.pkcs11 import PKCS11Signer

    svc = bench.services
    token = pkcs11.lib(svc.keys.module_path).get_token(token_label=svc.keys.token_label)
    # Login state is per process: kakuin's manager already logged in, so no PIN here (a
    # second C_Login would fail with UserAlreadyLoggedIn).
    session = token.open()
    chain = [asn1_x509.Certificate.load(d) for d in bench.credential.chain]
    signer = PKCS11Signer(session, key_id=bench.credential.key_id, signing_cert=chain[0],
                          ca_chain=chain[1:], use_raw_mechanism=True)
    meta = signers.PdfSignatureMetadata(field_name="Signature1")

    def seal() -> bytes:
        out = signers.sign_pdf(IncrementalPdfFileWriter(io.BytesIO(pdf)), meta, signer=signer)
        return bytes(out.getvalue())

    return seal


def check_pdf(bench: Bench, name: str, sealed: bytes, level: str) -> None:
    reader = PdfFileReader(io.BytesIO(sealed))
    context = bench.material.context()
    sig = reader.embedded_regular_signatures[-1]
    st = pv.validate_pdf_signature(sig, context, context)
    if not (st.intact and st.valid and st.trusted):
        raise RuntimeError(f"{name}: invalid output\n{st.pretty_print_details()}")
    if level != "B-B" and not (st.timestamp_validity and st.timestamp_validity.trusted):
        raise RuntimeError(f"{name}: no valid signature timestamp")
    if level == "B-LTA":
        dss = pv.DocumentSecurityStore.read_dss(reader)
        if not (dss.ocsps and dss.crls and reader.embedded_timestamp_signatures):
            raise RuntimeError(f"{name}: no DSS or document timestamp")


# cProfile buckets (own time, so they add up), matched in order on file path or description.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HSM (PKCS#11)", ("/hsm/", "pkcs11")),
    ("CMS and ASN.1 (asn1crypto, certvalidator)", ("/asn1crypto/", "/pyhanko_certvalidator/",
                                                    "/pyhanko/sign/")),
    ("PDF read/write (pyhanko.pdf_utils)", ("/pyhanko/pdf_utils/",)),
    ("hashing, zlib", ("_hashlib", "zlib", "hashlib")),
    ("stamp and font (signing/stamp.py, fontTools)", ("signing/stamp.py", "/fontTools/")),
    ("kakuin sealing (signing/)", (str(REPO / "signing") + "/",)),
    ("asyncio", ("/asyncio/",)),
)


def profile_pdf(fn: Callable[[], bytes], n: int) -> dict[str, Any]:
    profiler = cProfile.Profile()
    profiler.enable()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    profiler.disable()
    stats = pstats.Stats(profiler)
    buckets: dict[str, float] = {}
    top = []
    for (path, _line, func), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{path} {func}"
        bucket = next((b for b, needles in BUCKETS if any(x in key for x in needles)),
                      "other (stdlib, io)")
        buckets[bucket] = buckets.get(bucket, 0.0) + tottime
        top.append((tottime, calls, f"{Path(path).name}:{func}"))
    top.sort(reverse=True)
    total = sum(buckets.values())
    return {
        "documents": n,
        "profiled_ms_per_document": round(1000 * elapsed / n, 2),
        "buckets_ms_per_document": {b: round(1000 * t / n, 2) for b, t in
                                    sorted(buckets.items(), key=lambda kv: -kv[1])},
        "buckets_share": {b: round(t / total, 3) for b, t in buckets.items()},
        "top_tottime_ms_per_document": [
            {"ms": round(1000 * t / n, 3), "calls": c // n, "function": f} for t, c, f in top[:10]
        ],
    }


def measure_pdf(
    bench: Bench, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    pdf = guidance_record()
    over_http = pdf_endpoint_exists(bench, pdf)
    transport = "HTTP" if over_http else "in-process seal_pdf()"
    log(f"PDF: {len(pdf)} bytes, 3 pages; kakuin measured {transport}"
        + ("" if over_http else f" ({PDF_ENDPOINT} is not there yet)"))
    make = kakuin_http if over_http else kakuin_inprocess
    peers: dict[str, Callable[[], bytes]] = {}
    levels: dict[str, str] = {}
    for name, level, visible in (("kakuin B-B", "B-B", False), ("kakuin B-T", "B-T", False),
                                 ("kakuin B-LTA", "B-LTA", False),
                                 ("kakuin B-B visible", "B-B", True)):
        peers[name], levels[name] = make(bench, pdf, level, visible), level
    if over_http:  # the same seals without HTTP, authorisation, database and audit
        for level in ("B-B", "B-LTA"):
            peers[f"kakuin {level} in-process"] = kakuin_inprocess(bench, pdf, level, False)
            levels[f"kakuin {level} in-process"] = level
    peers["pyHanko B-B"], levels["pyHanko B-B"] = pyhanko_peer(bench, pdf), "B-B"
    results, first = run_rounds(peers, args.count, args.rounds, log)
    for name, sealed in first.items():
        check_pdf(bench, name, sealed, levels[name])
    log("first output of every peer checked with pyHanko's validator")
    peer = results["pyHanko B-B"]
    ratios: dict[str, Any] = {
        f"{name} / pyHanko B-B": round(results[name].per_s / peer.per_s, 2)
        for name in results if name != "pyHanko B-B"
    }
    ours = results["kakuin B-B"]
    ratios["kakuin B-B / pyHanko B-B (medians)"] = round(
        statistics.median(peer.seconds) / statistics.median(ours.seconds), 2)
    # per round (the two ran minutes apart at most): robust to load drifting on the machine
    by_round = [a / b for a, b in zip(ours.by_round, peer.by_round, strict=True)]
    ratios["kakuin B-B / pyHanko B-B by round (min, median, max)"] = [
        round(min(by_round), 2), round(statistics.median(by_round), 2), round(max(by_round), 2)]
    out: dict[str, Any] = {
        "document_bytes": len(pdf),
        "kakuin_transport": transport,
        "peers": {name: r.summary() for name, r in results.items()},
        "ratios": ratios,
    }
    if args.profile:
        log(f"profiling {args.profile} in-process B-B seals")
        out["profile_kakuin_b_b"] = profile_pdf(
            kakuin_inprocess(bench, pdf, "B-B", False), args.profile)
        out["profile_pyhanko_b_b"] = profile_pdf(peers["pyHanko B-B"], args.profile)
    return out


# -- main ---------------------------------------------------------------------------------------

#: One function per measurement; each returns a JSON-able dict.
MEASUREMENTS: dict[str, Callable[[Bench, argparse.Namespace, Callable[[str], None]],
                                 dict[str, Any]]] = {
    "pdf": measure_pdf,
}


def environment(args: argparse.Namespace, load_at_start: Sequence[float]) -> dict[str, Any]:
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "unknown"

    def tool(cmd: Sequence[str]) -> str:
        if shutil.which(cmd[0]) is None:
            return "unknown"
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        lines = (res.stdout or res.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

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
        "pyhanko": v("pyhanko"),
        "pyhanko-certvalidator": v("pyhanko-certvalidator"),
        "python-pkcs11": v("python-pkcs11"),
        "werkzeug": v("werkzeug"),
        "softhsm": tool(["softhsm2-util", "--version"]),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "count_per_peer": args.count,
        "rounds": args.rounds,
        "run_id": secrets.token_hex(4),
    }


def table(peers: dict[str, dict[str, Any]]) -> str:
    head = ("peer", "docs", "docs/s", "ms/doc", "median ms", "p95 ms", "KB out",
            "docs/s by round (min-max)")
    rows = [
        (name, str(s["documents"]), f"{s['per_s']:.1f}", f"{s['ms_mean']:.2f}",
         f"{s['ms_median']:.2f}", f"{s['ms_p95']:.2f}", f"{s['output_bytes'] / 1024:.1f}",
         f"{min(s['per_s_by_round']):.0f}-{max(s['per_s_by_round']):.0f}")
        for name, s in peers.items()
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cols: Sequence[str]) -> str:
        return "| " + " | ".join(
            c.ljust(w) if i in (0, 7) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))) + " |"

    sep = "|" + "|".join(
        (":" + "-" * (w + 1)) if i in (0, 7) else ("-" * (w + 1) + ":")
        for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def print_pdf(result: dict[str, Any]) -> None:
    print(f"PDF sealing, kakuin {result['kakuin_transport']}, "
          f"document {result['document_bytes']} bytes")
    print(table(result["peers"]))
    print()
    for k, val in result["ratios"].items():
        print(f"{k}: {val}")
    for label in ("profile_kakuin_b_b", "profile_pyhanko_b_b"):
        prof = result.get(label)
        if not prof:
            continue
        print()
        print(f"cProfile {label[8:]} ({prof['documents']} documents, "
              f"{prof['profiled_ms_per_document']} ms each under the profiler):")
        for b, ms in prof["buckets_ms_per_document"].items():
            print(f"  {b:45} {ms:8.2f} ms  {100 * prof['buckets_share'][b]:5.1f} %")
        print("  top functions by own time:")
        for f in prof["top_tottime_ms_per_document"][:8]:
            print(f"    {f['ms']:8.3f} ms  {f['calls']:6} calls  {f['function'][:70]}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--only", choices=sorted(MEASUREMENTS), action="append",
                   help="run only this measurement (repeatable; default: all)")
    p.add_argument("--count", type=int, default=200, help="documents per peer (default 200)")
    p.add_argument("--rounds", type=int, default=10,
                   help="alternating rounds the count is split into (default 10)")
    p.add_argument("--profile", type=int, default=50,
                   help="documents sealed under cProfile per profiled peer (default 50; 0: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = p.parse_args(argv)
    if args.count < args.rounds or args.rounds < 1 or args.profile < 0 or args.count > 5000:
        p.error("need 5000 >= --count >= --rounds >= 1 and --profile >= 0")
    return args


PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {"pdf": print_pdf}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True)) if args.json
        else (lambda s: print(s, flush=True))
    )
    os.environ.pop("KAKUIN_HSM_PIN", None)
    load_at_start = os.getloadavg()
    bench = setup(log)
    results: dict[str, Any] = {}
    try:
        for name in args.only or list(MEASUREMENTS):
            results[name] = MEASUREMENTS[name](bench, args, log)
    finally:
        bench.close(args.keep)
        if args.keep:
            log(f"kept {bench.tmp}")
    env = environment(args, load_at_start)
    if args.json:
        print(json.dumps({"environment": env, **results}, indent=2, ensure_ascii=False))
        return 0
    print()
    for k in ("date", "command", "git", "nproc", "python", "pyhanko", "python-pkcs11",
              "softhsm", "loadavg_at_start", "loadavg_at_end"):
        print(f"{k}: {env[k]}")
    for name, result in results.items():
        print()
        PRINTERS.get(name, lambda r: print(json.dumps(r, indent=2, ensure_ascii=False)))(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
