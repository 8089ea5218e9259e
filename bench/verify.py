"""Verifications per second: kakuin's ``signing.verify`` on a PAdES B-LTA PDF and a JAdES B-T
record, beside pyHanko's own validators on the same PDF, in-process.

Peers, in one process and one run, taking turns round by round (order reversed every other
round) so drift on a shared machine hits them alike; each parses the document from bytes:

- ``kakuin-pdf-lta``: ``verify_pdf(pdf, anchors, allow_online=False)``: the seal and its
  document timestamp, integrity, difference analysis, e-seal profile, paths of the seal and both
  TSA tokens, revocation of every certificate from the PDF's DSS (nothing fetched).
- ``pyhanko-ades-lta``: pyHanko's ETSI EN 319 102-1 LTA validation (``ades_lta_validation``)
  of the same seal, trusting only our root, revocation data required, nothing fetched (the spec
  tests/test_pdf.py uses).
- ``pyhanko-basic``: ``validate_pdf_signature`` of the seal with a validation context made from
  the DSS (``revocation_mode="require"``): integrity, difference analysis, signature timestamp,
  path and revocation at the current time; the document timestamp is not looked at.
- ``kakuin-jades-bt``: ``verify_jades`` of a B-T record; revocation over OCSP/CRL (seal
  certificate, TSA certificate, issuing CA) through a ``fetch`` that asks the in-process kakuin
  server once per URL and then answers from memory, so this measures verification, not
  loopback HTTP.
- ``kakuin-jades-bt-http``: the same, every OCSP request and CRL fetched over loopback HTTP
  from the werkzeug server (what an online verifier next to the CA pays).
- ``kakuin-jades-blt``: ``verify_jades`` of a B-LT record (``xVals``/``rVals``), offline.
- ``jws-structural``: ``signing.jades.verify_jws`` of the B-T record: signature, sigTst token and
  plain certificate paths, no revocation: the floor a full verification adds to.

Setup (untimed): a temporary home after the real key ceremony (``kakuin --home <tmp> init``,
SoftHSM token under the home), a board and a school with API tokens made in the store, a
hosted P-256 e-seal requested and approved over HTTP, CRLs published; then a 3-page 指導要録
sealed in-process at B-LTA (visible stamp) and a ~1.4 KB record sealed at B-T and B-LT. Every
peer's result is checked before timing (TOTAL-PASSED; pyHanko: AdES PASSED / bottom line).
``--profile N`` runs ``kakuin-pdf-lta`` N times under cProfile to say where the time goes.

    .venv/bin/python bench/verify.py [--count 100] [--rounds 10] [--profile 30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
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
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.fixtures_pdf (the guidance record)

from asn1crypto import x509 as asn1_x509  # noqa: E402
from pyhanko.pdf_utils.reader import PdfFileReader  # noqa: E402
from pyhanko.sign import validation as pv  # noqa: E402
from pyhanko.sign.ades.report import AdESPassed  # noqa: E402
from pyhanko.sign.validation.ades import ades_lta_validation  # noqa: E402
from pyhanko.sign.validation.policy_decl import (  # noqa: E402
    CertificateFetchingRule,
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko_certvalidator.context import CertValidationPolicySpec  # noqa: E402
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo  # noqa: E402
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy  # noqa: E402
from pyhanko_certvalidator.registry import SimpleTrustManager  # noqa: E402

from ca import clients, crl, registry, status  # noqa: E402
from kakuin.app import create_app  # noqa: E402
from kakuin.services import Services  # noqa: E402
from kakuin.settings import load_settings  # noqa: E402
from signing import jades  # noqa: E402
from signing.pdf import SealOptions, seal_pdf, validation_material  # noqa: E402
from signing.tsa import (  # noqa: E402
    ETSI_BTSP_POLICY,
    LocalTimeStamper,
    TimeStampAuthority,
    timestamp_token,
)
from signing.verify import (  # noqa: E402
    TOTAL_PASSED,
    Report,
    TrustAnchors,
    default_fetch,
    verify_jades,
    verify_pdf,
)
from tests.fixtures_pdf import guidance_record  # noqa: E402

KAKUIN = Path(sys.executable).parent / "kakuin"
BASE_URL = "http://pki.example.com"  # certificates name a public host; we route it to loopback
WARMUP = 3
RECORD = {
    "type": "指導要録（抄本）", "school": {"code": "C113210000010", "name": "新宿区立第一中学校"},
    "student": {"id": "S2026-000042", "name": "山田 花子", "kana": "ヤマダ ハナコ",
                "birth": "2011-04-02"},
    "year": 2026, "grade": 3, "class": "B", "attendance": {"days": 200, "absent": 2, "late": 1},
    "subjects": [{"name": n, "viewpoints": ["A", "A", "B"], "rating": 4}
                 for n in ("国語", "社会", "数学", "理科", "音楽", "美術", "保健体育",
                           "技術・家庭", "外国語")],
    "remarks": "学級委員として学級をまとめ、文化祭では実行委員長を務めた。" * 2,
    "issued": "2027-03-15T09:00:00+09:00",
}


class InProcessServer:
    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=False)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


def call(url: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    req = urllib.request.Request(url, data=data, method="POST", headers={  # noqa: S310
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 (our loopback server)
        out: dict[str, Any] = json.loads(resp.read())
        return out


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


@dataclass
class Artefacts:
    pdf: bytes
    jws_bt: bytes
    jws_blt: bytes
    root: asn1_x509.Certificate
    anchors: TrustAnchors
    server_url: str


def setup(tmp: Path, log: Callable[[str], None]) -> tuple[Services, InProcessServer, Artefacts]:
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
    logging.getLogger("pyhanko").setLevel(logging.ERROR)
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
    req = call(f"{server.url}/api/v1/seal-requests", system,
               {"key": {"hosted": True, "algorithm": "ECDSA-P256"}})
    call(f"{server.url}/api/v1/seal-requests/{req['id']}/approve", officer)
    authorities = crl.load_authorities(svc.store, svc.keys, root_name=settings.ca.root_name,
                                       issuing_name=settings.ca.issuing_name)
    crl.publish_due(svc.store, authorities=authorities)
    credential = status.seal_credential(svc.store, school_id)
    authority = TimeStampAuthority(svc.store, svc.keys, policy_oid=ETSI_BTSP_POLICY)
    material = validation_material(svc.store, svc.keys, credential,
                                   crl_issuers=[settings.ca.root_name])
    log("sealing a 3-page guidance record at B-LTA and a JSON record at B-T and B-LT")
    pdf = seal_pdf(guidance_record(pages=3), credential, svc.keys,
                   timestamper=LocalTimeStamper(authority), validation=material,
                   options=SealOptions(level="B-LTA")).pdf
    record = json.dumps(RECORD, ensure_ascii=False, indent=1).encode()

    def tsa(data: bytes) -> bytes:
        return bytes(timestamp_token(authority, data).dump())

    jws_bt = jades.seal_json(record, credential, svc.keys, level="B-T", timestamp=tsa)
    lt_material = jades.gather_validation_material(
        svc.store, svc.keys, credential, tsa=status.tsa_credential(svc.store),
        crl_issuers=[settings.ca.root_name])
    jws_blt = jades.seal_json(record, credential, svc.keys, level="B-LT", timestamp=tsa,
                              validation_material=lt_material)
    root_der = credential.chain[-1]
    time.sleep(1.5)  # genTime is rounded to the second: let "now" pass every token
    return svc, server, Artefacts(pdf, json.dumps(jws_bt).encode(),
                                  json.dumps(jws_blt).encode(),
                                  asn1_x509.Certificate.load(root_der), TrustAnchors([root_der]),
                                  server.url)


# -- peers ---------------------------------------------------------------------------------------


def routed(server_url: str) -> Callable[[str, bytes | None, str | None], bytes]:
    def fetch(url: str, body: bytes | None, content_type: str | None) -> bytes:
        if url.startswith(BASE_URL + "/"):
            url = server_url + url[len(BASE_URL):]
        return default_fetch(url, body, content_type)
    return fetch


def memoized(inner: Callable[[str, bytes | None, str | None], bytes],
             ) -> Callable[[str, bytes | None, str | None], bytes]:
    cache: dict[tuple[str, bytes | None], bytes] = {}

    def fetch(url: str, body: bytes | None, content_type: str | None) -> bytes:
        key = (url, body)
        if key not in cache:
            cache[key] = inner(url, body, content_type)
        return cache[key]
    return fetch


def lta_spec(root: asn1_x509.Certificate) -> PdfSignatureValidationSpec:
    return PdfSignatureValidationSpec(SignatureValidationSpec(
        cert_validation_policy=CertValidationPolicySpec(
            trust_manager=SimpleTrustManager.build(trust_roots=[root]),
            revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
        ),
        revinfo_gathering_policy=RevocationInfoGatheringSpec(
            online_fetching_rule=RevinfoOnlineFetchingRule.LOCAL_ONLY,
            certificate_fetching_rule=CertificateFetchingRule.NEVER_FETCH,
        ),
    ))


def peers(a: Artefacts) -> dict[str, Callable[[], bool]]:
    """Each peer verifies once and says whether the document passed."""
    spec = lta_spec(a.root)
    cached = memoized(routed(a.server_url))
    online = routed(a.server_url)
    bt = json.loads(a.jws_bt)

    def ok(report: Report) -> bool:
        return report.indication == TOTAL_PASSED

    def pyhanko_lta() -> bool:
        sig = PdfFileReader(io.BytesIO(a.pdf)).embedded_regular_signatures[0]
        now = dt.datetime.now(dt.UTC)
        timing = ValidationTimingInfo(now, now, point_in_time_validation=False)
        result = asyncio.run(ades_lta_validation(sig, spec, timing_info=timing))
        return result.ades_subindic == AdESPassed.OK

    def pyhanko_basic() -> bool:
        reader = PdfFileReader(io.BytesIO(a.pdf))
        dss = pv.DocumentSecurityStore.read_dss(reader)
        context = dss.as_validation_context({"trust_roots": [a.root],
                                             "revocation_mode": "require",
                                             "allow_fetching": False})
        sig = reader.embedded_regular_signatures[0]
        return bool(pv.validate_pdf_signature(sig, context, context).bottom_line)

    def structural() -> bool:
        jades.verify_jws(bt, [a.root.dump()])
        return True

    return {
        "kakuin-pdf-lta": lambda: ok(verify_pdf(a.pdf, a.anchors, allow_online=False)),
        "pyhanko-ades-lta": pyhanko_lta,
        "pyhanko-basic": pyhanko_basic,
        "kakuin-jades-bt": lambda: ok(verify_jades(a.jws_bt, a.anchors, fetch=cached)),
        "kakuin-jades-bt-http": lambda: ok(verify_jades(a.jws_bt, a.anchors, fetch=online)),
        "kakuin-jades-blt": lambda: ok(verify_jades(a.jws_blt, a.anchors, allow_online=False)),
        "jws-structural": structural,
    }


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Peer:
    name: str
    seconds: list[float] = field(default_factory=list)
    by_round: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.seconds)
        return {
            "verifications": len(self.seconds),
            "per_s": round(self.per_s, 2),
            "ms_mean": round(1000 * statistics.fmean(self.seconds), 2),
            "ms_median": round(1000 * statistics.median(self.seconds), 2),
            "ms_p95": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "per_s_by_round": [round(x, 1) for x in self.by_round],
        }


def run_rounds(fns: dict[str, Callable[[], bool]], count: int, rounds: int,
               log: Callable[[str], None]) -> dict[str, Peer]:
    for name, fn in fns.items():
        for _ in range(WARMUP):
            if not fn():
                raise RuntimeError(f"{name}: the document did not pass")
    results = {name: Peer(name) for name in fns}
    per_round = [count // rounds + (1 if r < count % rounds else 0) for r in range(rounds)]
    for r, n in enumerate(per_round):
        for name in (list(fns) if r % 2 == 0 else list(reversed(fns))):
            fn, res = fns[name], results[name]
            start = time.perf_counter()
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                res.seconds.append(time.perf_counter() - t0)
            res.by_round.append(n / (time.perf_counter() - start))
        log(f"round {r + 1}/{rounds}: " + "  ".join(
            f"{name} {results[name].by_round[-1]:.1f}/s" for name in fns))
    return results


BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("difference analysis (pyhanko diff_analysis)", ("/pyhanko/sign/diff_analysis/",)),
    ("PDF parsing (pyhanko.pdf_utils)", ("/pyhanko/pdf_utils/",)),
    ("path and revocation (pyhanko_certvalidator)", ("/pyhanko_certvalidator/",)),
    ("CMS checks (pyhanko.sign)", ("/pyhanko/sign/",)),
    ("ASN.1 (asn1crypto)", ("/asn1crypto/",)),
    ("crypto and hashing (cryptography, hashlib)", ("/cryptography/", "_hashlib", "hashlib",
                                                    "_rust", "cryptography.")),
    ("kakuin (signing/verify.py, jades.py)", (str(REPO / "signing") + "/",)),
    ("asyncio", ("/asyncio/",)),
)


def profile(fn: Callable[[], bool], n: int) -> dict[str, Any]:
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    wall = time.perf_counter() - start
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    buckets: dict[str, float] = {}
    total = 0.0
    for (path, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        key = f"{path} {func}"
        name = next((b for b, needles in BUCKETS if any(s in key for s in needles)),
                    "other (stdlib, builtins)")
        buckets[name] = buckets.get(name, 0.0) + tt
        total += tt
    return {
        "verifications": n,
        "profiled_ms_per_verification": round(1000 * wall / n, 2),
        "buckets_ms": {k: round(1000 * v / n, 2)
                       for k, v in sorted(buckets.items(), key=lambda kv: -kv[1])},
        "buckets_share": {k: round(v / total, 3) for k, v in buckets.items()},
    }


def environment(args: argparse.Namespace, load_at_start: Sequence[float]) -> dict[str, Any]:
    from importlib.metadata import version

    def tool(cmd: Sequence[str]) -> str:
        if shutil.which(cmd[0]) is None:
            return "unknown"
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        lines = (res.stdout or res.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    head = tool(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "git": head + (" (dirty tree)" if dirty else ""),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "pyhanko": version("pyhanko"),
        "pyhanko-certvalidator": version("pyhanko-certvalidator"),
        "cryptography": version("cryptography"),
        "softhsm": tool(["softhsm2-util", "--version"]),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "count_per_peer": args.count,
        "rounds": args.rounds,
        "run_id": secrets.token_hex(4),
    }


def table(results: dict[str, Peer]) -> str:
    head = ("peer", "verifications", "per s", "ms mean", "ms median", "ms p95",
            "per s by round (min-max)")
    rows = []
    for name, peer in results.items():
        s = peer.summary()
        rows.append((name, str(s["verifications"]), f"{s['per_s']:.1f}", f"{s['ms_mean']:.2f}",
                     f"{s['ms_median']:.2f}", f"{s['ms_p95']:.2f}",
                     f"{min(s['per_s_by_round']):.0f}-{max(s['per_s_by_round']):.0f}"))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cols: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i in (0, 6) else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cols, widths, strict=True))) + " |"

    sep = "|" + "|".join((":" + "-" * (w + 1)) if i in (0, 6) else ("-" * (w + 1) + ":")
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=100, help="verifications per peer (default 100)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    p.add_argument("--profile", type=int, default=30,
                   help="kakuin-pdf-lta verifications under cProfile (default 30; 0: none)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = p.parse_args(argv)
    if args.count < args.rounds or args.rounds < 1 or args.profile < 0 or args.count > 5000:
        p.error("need 5000 >= --count >= --rounds >= 1 and --profile >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True)) if args.json
        else (lambda s: print(s, flush=True))
    )
    os.environ.pop("KAKUIN_HSM_PIN", None)
    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kakuin-bench-verify-"))
    svc: Services | None = None
    server: InProcessServer | None = None
    try:
        svc, server, artefacts = setup(tmp, log)
        fns = peers(artefacts)
        results = run_rounds(fns, args.count, args.rounds, log)
        prof = profile(fns["kakuin-pdf-lta"], args.profile) if args.profile else None
    finally:
        if server is not None:
            server.stop()
        if svc is not None:
            svc.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def rate(name: str) -> float:
        return results[name].per_s

    def median_ratio(a: str, b: str) -> float:
        return round(statistics.median(results[b].seconds)
                     / statistics.median(results[a].seconds), 3)

    ratios = {
        "kakuin_pdf_over_pyhanko_ades_lta": round(rate("kakuin-pdf-lta")
                                                  / rate("pyhanko-ades-lta"), 3),
        "kakuin_pdf_over_pyhanko_ades_lta_median": median_ratio("kakuin-pdf-lta",
                                                                "pyhanko-ades-lta"),
        "kakuin_pdf_over_pyhanko_basic": round(rate("kakuin-pdf-lta") / rate("pyhanko-basic"), 3),
        "kakuin_jades_bt_over_structural": round(rate("kakuin-jades-bt")
                                                 / rate("jws-structural"), 3),
        "kakuin_jades_bt_http_over_cached": round(rate("kakuin-jades-bt-http")
                                                  / rate("kakuin-jades-bt"), 3),
        "kakuin_jades_blt_over_bt": round(rate("kakuin-jades-blt") / rate("kakuin-jades-bt"), 3),
    }
    env = environment(args, load_at_start)
    out = {"environment": env, "pdf_bytes": len(artefacts.pdf),
           "jws_bt_bytes": len(artefacts.jws_bt), "jws_blt_bytes": len(artefacts.jws_blt),
           "peers": {n: p.summary() for n, p in results.items()}, "ratios": ratios,
           "profile_kakuin_pdf_lta": prof}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print()
    for k in ("date", "command", "git", "nproc", "python", "pyhanko", "pyhanko-certvalidator",
              "cryptography", "softhsm", "loadavg_at_start", "loadavg_at_end"):
        print(f"{k}: {env[k]}")
    print(f"documents: PDF B-LTA {len(artefacts.pdf)} bytes, JWS B-T {len(artefacts.jws_bt)} "
          f"bytes, JWS B-LT {len(artefacts.jws_blt)} bytes")
    print()
    print(table(results))
    print()
    for k, v in ratios.items():
        print(f"{k}: {v}")
    if prof:
        print()
        print(f"cProfile kakuin-pdf-lta ({prof['verifications']} verifications, "
              f"{prof['profiled_ms_per_verification']} ms each under the profiler):")
        for b, ms in prof["buckets_ms"].items():
            print(f"  {b:48} {ms:8.2f} ms  {100 * prof['buckets_share'][b]:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
