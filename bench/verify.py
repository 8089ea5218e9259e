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

    .venv/bin/python bench/verify.py [--count 100] [--rounds 10] [--profile 30] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from asn1crypto import x509 as asn1_x509
from harness import (
    BASE_URL,
    REPO,
    Instance,
    Log,
    arguments,
    environment,
    finish_arguments,
    instance,
    logger,
    print_environment,
    print_profile,
    profile,
    rate_table,
    run_rounds,
)
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import validation as pv
from pyhanko.sign.ades.report import AdESPassed
from pyhanko.sign.validation.ades import ades_lta_validation
from pyhanko.sign.validation.policy_decl import (
    CertificateFetchingRule,
    PdfSignatureValidationSpec,
    RevinfoOnlineFetchingRule,
    RevocationInfoGatheringSpec,
    SignatureValidationSpec,
)
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.ltv.types import ValidationTimingInfo
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager

from ca import status
from signing import jades
from signing.pdf import SealOptions, seal_pdf, validation_material
from signing.tsa import (
    ETSI_BTSP_POLICY,
    LocalTimeStamper,
    TimeStampAuthority,
    timestamp_token,
)
from signing.verify import (
    TOTAL_PASSED,
    Report,
    TrustAnchors,
    default_fetch,
    verify_jades,
    verify_pdf,
)
from tests.fixtures_pdf import guidance_record

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


@dataclass
class Artefacts:
    pdf: bytes
    jws_bt: bytes
    jws_blt: bytes
    root: asn1_x509.Certificate
    anchors: TrustAnchors
    server_url: str


def setup(log: Log) -> tuple[Instance, Artefacts]:
    inst = instance("verify", log)
    svc, settings = inst.services, inst.settings
    credential = status.seal_credential(svc.store, inst.tokens.school_id)
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
    return inst, Artefacts(pdf, json.dumps(jws_bt).encode(), json.dumps(jws_blt).encode(),
                           asn1_x509.Certificate.load(root_der), TrustAnchors([root_der]),
                           inst.server.url)


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



def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arguments(__doc__, count=100, rounds=10, what="verifications")
    p.add_argument("--profile", type=int, default=30,
                   help="kakuin-pdf-lta verifications under cProfile (default 30; 0: none)")
    return finish_arguments(p, p.parse_args(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logger(args.json)
    load_at_start = os.getloadavg()
    inst, artefacts = setup(log)
    try:
        fns = peers(artefacts)
        stats, first = run_rounds(fns, args.count, args.rounds, log)
        failed = [name for name, passed in first.items() if passed is not True]
        if failed:
            raise RuntimeError(f"the document did not pass: {failed}")
        prof = (profile(fns["kakuin-pdf-lta"], args.profile, BUCKETS,
                        "other (stdlib, builtins)", "verification") if args.profile else None)
    finally:
        inst.close(args.keep, log)
    results = {n: p.summary("verifications") for n, p in stats.items()}

    def rate(name: str) -> float:
        return stats[name].per_s

    def median_ratio(a: str, b: str) -> float:
        return round(statistics.median(stats[b].seconds)
                     / statistics.median(stats[a].seconds), 3)

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
    env = environment(load_at_start, packages=("pyhanko", "pyhanko-certvalidator",
                                               "cryptography"),
                      count_per_peer=args.count, rounds=args.rounds)
    out = {"environment": env, "pdf_bytes": len(artefacts.pdf),
           "jws_bt_bytes": len(artefacts.jws_bt), "jws_blt_bytes": len(artefacts.jws_blt),
           "peers": results, "ratios": ratios, "profile_kakuin_pdf_lta": prof}
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print()
    print_environment(env, ("date", "command", "git", "nproc", "python", "pyhanko",
                            "pyhanko-certvalidator", "cryptography", "softhsm",
                            "loadavg_at_start", "loadavg_at_end"))
    print(f"documents: PDF B-LTA {len(artefacts.pdf)} bytes, JWS B-T {len(artefacts.jws_bt)} "
          f"bytes, JWS B-LT {len(artefacts.jws_blt)} bytes")
    print()
    print(rate_table(results, "verifications", "verifications", one="verification"))
    print()
    for k, v in ratios.items():
        print(f"{k}: {v}")
    if prof:
        print()
        print_profile("kakuin-pdf-lta", prof, "verification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
