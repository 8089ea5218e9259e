"""Concurrent verifications over HTTP against ``kakuin serve`` as ``make run`` starts it, beside
pyHanko's own validator in-process on the same files.

Setup (untimed): a temporary home after the real key ceremony, ``kakuin --home H serve`` as its
own process with the settings' workers (2 sync gunicorn workers, as ``make run``), the
instance's ``base_url`` its own loopback port (so the certificates' OCSP/CRL URLs point at the
very server under load: a verifier that fetched them over HTTP would call itself). A school's
hosted P-256 seal is requested and approved over HTTP; then, sealed over HTTP:

- ``bt-json``: a JAdES B-T record (no revocation data inside: status comes from the CA);
- ``bt-pdf``: a 3-page 指導要録 at PAdES B-T (same);
- ``lta-pdf``: the same at B-LTA (DSS + document timestamp);
- ``seals50-pdf``: a 1-page PDF sealed 50 times in a row (B-T, invisible), the cost case.

Load: for each document and each client count (``--clients``, default 1, 8, 32), that many
threads each POST /api/v1/verify ``--per-client`` times (new connection per request);
throughput, p50/p95 latency and the verdicts (indication/sub-indication, or the HTTP status).
The 50-seal PDF, seconds per verification, gets ``--seals50-clients`` (1, 2) once each.

Peers (``--rounds``): per document, one kakuin HTTP verification (1 client) and pyHanko's
validator in-process on the same bytes take turns (order reversed every other round); the
figure is the median of the per-round ratios pyhanko_seconds / kakuin_seconds. pyHanko's peer:
``validate_pdf_signature`` of every signature (``validate_pdf_timestamp`` for document
timestamps) with a ValidationContext trusting only our root, revocation ``hard-fail`` with
online fetching allowed (it fetches OCSP/CRL from the same server) plus the DSS; pyHanko has no
JAdES validator, so the JSON row has no peer.

    .venv/bin/python bench/verify_load.py [--clients 1,8,32] [--per-client 2] [--rounds 5]
        [--documents bt-json,bt-pdf,lta-pdf,seals50-pdf] [--home DIR (reused when present)]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asn1crypto import x509 as asn1_x509  # noqa: E402
from pyhanko.pdf_utils.reader import PdfFileReader  # noqa: E402
from pyhanko.sign import validation as pv  # noqa: E402
from pyhanko_certvalidator import ValidationContext  # noqa: E402

from tests.fixtures_pdf import guidance_record, minimal_pdf  # noqa: E402
from tests.served import Served, http  # noqa: E402

DOCUMENTS = ("bt-json", "bt-pdf", "lta-pdf", "seals50-pdf")
RECORD = {
    "type": "指導要録（抄本）", "school": {"code": "C113210000010", "name": "新宿区立第一中学校"},
    "student": {"id": "S2026-000042", "name": "山田 花子", "birth": "2011-04-02"},
    "year": 2026, "grade": 3, "remarks": "学級委員として学級をまとめた。",
}


def seal_documents(inst: Served, names: Sequence[str], log: Callable[[str], None],
                   ) -> dict[str, bytes]:
    docs: dict[str, bytes] = {}
    if "bt-json" in names:
        docs["bt-json"] = inst.seal_json(RECORD, "B-T")
    if "bt-pdf" in names:
        docs["bt-pdf"] = inst.seal_pdf(guidance_record(pages=3), "B-T")
    if "lta-pdf" in names:
        docs["lta-pdf"] = inst.seal_pdf(guidance_record(pages=3), "B-LTA")
    if "seals50-pdf" in names:
        pdf = minimal_pdf("50 seals")
        for i in range(50):
            pdf = inst.seal_pdf(pdf, "B-T", visible="false", field=f"Seal{i + 1}")
            if (i + 1) % 10 == 0:
                log(f"  sealed {i + 1}/50")
        docs["seals50-pdf"] = pdf
    return docs


def prepare(home: Path, names: Sequence[str], log: Callable[[str], None],
            ) -> tuple[Served, dict[str, bytes]]:
    """A served instance with sealed documents; a home kept from an earlier run is reused."""
    state = home / "bench-state.json"
    if state.exists():
        saved = json.loads(state.read_text())
        inst = Served(home, port=saved["port"])
        inst.start()
        docs = {n: (home / f"doc-{n}").read_bytes() for n in saved["documents"]}
        missing = [n for n in names if n not in docs]
        if missing:
            inst.school_token = saved["school_token"]
            docs.update(seal_documents(inst, missing, log))
    else:
        inst = Served(home)
        log(f"key ceremony: kakuin --home {home} init")
        inst.init()
        inst.start()
        log("school, hosted seal (request + approval over HTTP)")
        inst.bootstrap_school()
        log("sealing the documents over HTTP")
        docs = seal_documents(inst, names, log)
        saved = {"port": inst.port, "school_token": inst.school_token}
    for n, d in docs.items():
        (home / f"doc-{n}").write_bytes(d)
    saved["documents"] = sorted(docs)
    state.write_text(json.dumps(saved))
    time.sleep(1.2)  # genTime is truncated to the second: let "now" pass every token
    return inst, {n: docs[n] for n in names}


def filename(name: str) -> str:
    return f"{name}.json" if name.endswith("json") else f"{name}.pdf"


def verdict(code: int, body: dict[str, Any]) -> str:
    if code != 200:
        return f"HTTP {code}"
    sub = body.get("sub_indication")
    return body.get("indication", "?") + (f"/{sub}" if sub else "")


def load(inst: Served, name: str, data: bytes, clients: int, per_client: int,
         ) -> dict[str, Any]:
    latencies: list[float] = []
    verdicts: Counter[str] = Counter()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client() -> None:
        start_gate.wait()
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                code, body = inst.verify(data, filename(name), timeout=300)
                v = verdict(code, body)
            except Exception as exc:  # a dropped connection is a result too
                v = f"error {type(exc).__name__}"
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                verdicts[v] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {
        "document": name, "clients": clients, "requests": len(latencies),
        "per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
        "max_ms": round(1000 * ordered[-1], 1),
        "verdicts": dict(verdicts),
    }


def pyhanko_peer(data: bytes, root: asn1_x509.Certificate) -> Callable[[], bool]:
    """pyHanko's validator on every signature of the PDF, online revocation, our root only."""
    def run() -> bool:
        reader = PdfFileReader(io.BytesIO(data))
        settings = {"trust_roots": [root], "allow_fetching": True,
                    "revocation_mode": "hard-fail"}

        def context() -> ValidationContext:
            try:
                dss = pv.DocumentSecurityStore.read_dss(reader)
            except Exception:  # no DSS: online only
                return ValidationContext(**settings)
            return dss.as_validation_context(settings)
        ok = True
        for sig in reader.embedded_signatures:
            vc = context()
            if sig.sig_object_type == "/DocTimeStamp":
                stamp = pv.validate_pdf_timestamp(sig, validation_context=vc)
                ok = ok and bool(stamp.intact and stamp.valid and stamp.trusted)
            else:
                ok = ok and bool(pv.validate_pdf_signature(sig, vc, vc).bottom_line)
        return ok
    return run


def peer_rounds(inst: Served, name: str, data: bytes, rounds: int,
                root: asn1_x509.Certificate) -> dict[str, Any]:
    if name.endswith("json"):
        return {"document": name, "peer": "none (pyHanko has no JAdES validator)"}
    peer = pyhanko_peer(data, root)
    peer_ok = peer()
    ours: list[float] = []
    theirs: list[float] = []
    for r in range(rounds):
        order = ("kakuin", "pyhanko") if r % 2 == 0 else ("pyhanko", "kakuin")
        for who in order:
            t0 = time.perf_counter()
            if who == "kakuin":
                inst.verify(data, filename(name), timeout=300)
                ours.append(time.perf_counter() - t0)
            else:
                peer()
                theirs.append(time.perf_counter() - t0)
    ratios = [p / k for k, p in zip(ours, theirs, strict=True)]
    return {"document": name, "peer": "pyhanko validate_pdf_signature (in-process, online)",
            "peer_passes": peer_ok,
            "kakuin_http_ms_median": round(1000 * statistics.median(ours), 1),
            "pyhanko_ms_median": round(1000 * statistics.median(theirs), 1),
            "median_ratio_pyhanko_over_kakuin": round(statistics.median(ratios), 2)}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="peer rounds per document (0: none)")
    p.add_argument("--seals50-clients", default="1,2",
                   help="client counts for the 50-seal PDF (each verification takes seconds)")
    p.add_argument("--seals50-rounds", type=int, default=1)
    p.add_argument("--documents", default=",".join(DOCUMENTS))
    p.add_argument("--home", type=Path, default=None,
                   help="home to use and keep (reused with its documents when present)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",")]
    args.seals50_clients = [int(c) for c in args.seals50_clients.split(",")]
    args.documents = [d for d in args.documents.split(",") if d]
    if any(d not in DOCUMENTS for d in args.documents) or min(args.clients) < 1:
        p.error(f"documents among {', '.join(DOCUMENTS)}; clients >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    load_at_start = os.getloadavg()
    home = args.home or Path(tempfile.mkdtemp(prefix="kakuin-bench-load-")) / "home"
    inst: Served | None = None
    try:
        inst, docs = prepare(home, args.documents, log)
        root = asn1_x509.Certificate.load(
            http("GET", f"{inst.url}/pki/kakuin-root-ca.crt")[2])
        rows = []
        for name, data in docs.items():
            heavy = name == "seals50-pdf"
            for clients in (args.seals50_clients if heavy else args.clients):
                row = load(inst, name, data, clients, 1 if heavy else args.per_client)
                log(json.dumps(row, ensure_ascii=False))
                rows.append(row)
        peers = []
        if args.rounds:
            for name, data in docs.items():
                rounds = args.seals50_rounds if name == "seals50-pdf" else args.rounds
                row = peer_rounds(inst, name, data, rounds, root)
                log(json.dumps(row, ensure_ascii=False))
                peers.append(row)
    finally:
        if inst is not None:
            inst.stop()
        if args.home is None:
            shutil.rmtree(home.parent, ignore_errors=True)
    from importlib.metadata import version
    out = {
        "environment": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([".venv/bin/python", *sys.argv]),
            "nproc": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "pyhanko": version("pyhanko"), "gunicorn": version("gunicorn"),
            "loadavg_at_start": [round(x, 2) for x in load_at_start],
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "document_bytes": {n: len(d) for n, d in docs.items()},
        "load": rows, "peers": peers,
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for k, v in out["environment"].items():
        print(f"{k}: {v}")
    print("documents: " + ", ".join(f"{n} {b} bytes" for n, b in out["document_bytes"].items()))
    print()
    print("| document | clients | requests | per s | p50 ms | p95 ms | max ms | verdicts |")
    print("|:--|--:|--:|--:|--:|--:|--:|:--|")
    for r in rows:
        v = ", ".join(f"{k} ×{n}" for k, n in sorted(r["verdicts"].items()))
        print(f"| {r['document']} | {r['clients']} | {r['requests']} | {r['per_s']} | "
              f"{r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | {v} |")
    if peers:
        print()
        print("| document | kakuin HTTP ms (median) | pyHanko in-process ms (median) | "
              "median of per-round ratios pyHanko/kakuin | pyHanko passes |")
        print("|:--|--:|--:|--:|:--|")
        for p in peers:
            if "kakuin_http_ms_median" not in p:
                print(f"| {p['document']} | | | {p['peer']} | |")
                continue
            print(f"| {p['document']} | {p['kakuin_http_ms_median']} | {p['pyhanko_ms_median']} "
                  f"| {p['median_ratio_pyhanko_over_kakuin']} | {p['peer_passes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
