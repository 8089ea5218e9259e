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

    .venv/bin/python bench/seal.py [--count 200] [--rounds 10] [--profile 50] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from asn1crypto import x509 as asn1_x509
from harness import (
    BASE_URL,
    REPO,
    Instance,
    Log,
    arguments,
    call,
    environment,
    finish_arguments,
    instance,
    logger,
    print_environment,
    print_profile,
    profile,
    rate_table,
    ratio_by_round,
    run_rounds,
)
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import signers
from pyhanko.sign import validation as pv

from ca import status
from signing.pdf import SealOptions, ValidationMaterial, seal_pdf, validation_material
from signing.tsa import ETSI_BTSP_POLICY, LocalTimeStamper, TimeStampAuthority
from tests.fixtures_pdf import guidance_record

PDF_ENDPOINT = "/api/v1/seal/pdf"


@dataclass
class Bench:
    """Everything the measurements share: one instance, one HSM session, one sealing key."""

    inst: Instance
    credential: status.Credential
    timestamper: LocalTimeStamper
    material: ValidationMaterial


def setup(log: Log) -> Bench:
    inst = instance("seal", log)
    svc = inst.services
    credential = status.seal_credential(svc.store, inst.tokens.school_id)
    tsa = TimeStampAuthority(svc.store, svc.keys, policy_oid=ETSI_BTSP_POLICY)
    material = validation_material(svc.store, svc.keys, credential,
                                   crl_issuers=[inst.settings.ca.root_name])
    return Bench(inst, credential, LocalTimeStamper(tsa), material)


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
    code, _ = call(bench.inst.server.port, "POST", f"{PDF_ENDPOINT}?level=B-B",
                   bench.inst.tokens.school, body, ctype)
    return code == 200


def kakuin_http(bench: Bench, pdf: bytes, level: str, visible: bool) -> Callable[[], bytes]:
    query = f"?level={level}" + ("" if visible else "&visible=false")

    def seal() -> bytes:
        body, ctype = multipart("file", "shidou-youroku.pdf", pdf)
        code, out = call(bench.inst.server.port, "POST", PDF_ENDPOINT + query,
                         bench.inst.tokens.school, body, ctype)
        if code != 200:
            raise RuntimeError(f"{PDF_ENDPOINT}{query}: {code} {out[:300]!r}")
        return out

    return seal


def kakuin_inprocess(bench: Bench, pdf: bytes, level: str, visible: bool) -> Callable[[], bytes]:
    options = SealOptions(level=level, visible=visible, verify_url=BASE_URL + "/verify")

    def seal() -> bytes:
        return seal_pdf(pdf, bench.credential, bench.inst.services.keys,
                        timestamper=bench.timestamper, validation=bench.material,
                        options=options).pdf

    return seal


def pyhanko_peer(bench: Bench, pdf: bytes) -> Callable[[], bytes]:
    """pyHanko's PKCS11Signer on the same token and key, default sign_pdf settings."""
    import pkcs11
    from pyhanko.sign.pkcs11 import PKCS11Signer

    svc = bench.inst.services
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
    ratios["kakuin B-B / pyHanko B-B by round (min, median, max)"] = ratio_by_round(ours, peer)
    out: dict[str, Any] = {
        "document_bytes": len(pdf),
        "kakuin_transport": transport,
        "peers": {name: r.summary("documents") for name, r in results.items()},
        "ratios": ratios,
    }
    if args.profile:
        log(f"profiling {args.profile} in-process B-B seals")
        out["profile_kakuin_b_b"] = profile(kakuin_inprocess(bench, pdf, "B-B", False),
                                            args.profile, BUCKETS, "other (stdlib, io)",
                                            "document")
        out["profile_pyhanko_b_b"] = profile(peers["pyHanko B-B"], args.profile, BUCKETS,
                                             "other (stdlib, io)", "document")
    return out


# -- main ---------------------------------------------------------------------------------------

#: One function per measurement; each returns a JSON-able dict.
MEASUREMENTS: dict[str, Callable[[Bench, argparse.Namespace, Callable[[str], None]],
                                 dict[str, Any]]] = {
    "pdf": measure_pdf,
}


def print_pdf(result: dict[str, Any]) -> None:
    print(f"PDF sealing, kakuin {result['kakuin_transport']}, "
          f"document {result['document_bytes']} bytes")
    print(rate_table(result["peers"], "docs", "documents", one="doc", with_size=True))
    print()
    for k, val in result["ratios"].items():
        print(f"{k}: {val}")
    for label in ("profile_kakuin_b_b", "profile_pyhanko_b_b"):
        prof = result.get(label)
        if not prof:
            continue
        print()
        print_profile(label[8:], prof, "document")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arguments(__doc__, count=200, rounds=10, what="documents")
    p.add_argument("--only", choices=sorted(MEASUREMENTS), action="append",
                   help="run only this measurement (repeatable; default: all)")
    p.add_argument("--profile", type=int, default=50,
                   help="documents sealed under cProfile per profiled peer (default 50; 0: none)")
    return finish_arguments(p, p.parse_args(argv))


PRINTERS: dict[str, Callable[[dict[str, Any]], None]] = {"pdf": print_pdf}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logger(args.json)
    load_at_start = os.getloadavg()
    bench = setup(log)
    results: dict[str, Any] = {}
    try:
        for name in args.only or list(MEASUREMENTS):
            results[name] = MEASUREMENTS[name](bench, args, log)
    finally:
        bench.inst.close(args.keep, log)
    env = environment(load_at_start, packages=("pyhanko", "pyhanko-certvalidator",
                                               "python-pkcs11", "werkzeug"),
                      count_per_peer=args.count, rounds=args.rounds)
    if args.json:
        print(json.dumps({"environment": env, **results}, indent=2, ensure_ascii=False))
        return 0
    print()
    print_environment(env, ("date", "command", "git", "nproc", "python", "pyhanko",
                            "python-pkcs11", "softhsm", "loadavg_at_start", "loadavg_at_end"))
    for name, result in results.items():
        print()
        PRINTERS.get(name, lambda r: print(json.dumps(r, indent=2, ensure_ascii=False)))(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
