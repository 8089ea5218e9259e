"""Is the hand-written DER encoder (hsm/der.py) still worth it? Same run, in-process.

For each hot structure kakuin encodes by hand, the same bytes built by asn1crypto from native
values (``Class(native).dump()``, what code written against asn1crypto would do), checked
equal byte for byte first:

- ``ocsp``: an OCSP response with two SingleResponses (SHA-256 and SHA-1 CertIDs: a two-CertID
  answer; pre-signed ones now hold one), as
  ``Responder._signed`` builds it; the HSM signature stubbed with a fixed one, so only
  encoding is timed.
- ``crl``: the revokedCertificates of a CRL (``ca.crl._entry`` for each entry, with reasons
  and invalidity dates), ``--entries`` entries.
- ``tsa``: a granted TimeStampResp with token and certificates, as ``respond()`` builds it;
  the serial reservation and HSM signature stubbed, so the query parse plus encoding is
  timed on the hand-written side (which only favours asn1crypto).

A hand-written encoder survives only where asn1crypto costs at least twice as much
(issue 12 item 3). Setup: a temporary home after the real key ceremony.

    .venv/bin/python bench/der.py [--count 2000] [--rounds 5] [--entries 10000] [--json]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import sys
import timeit
from collections.abc import Callable, Sequence
from typing import Any

from asn1crypto import cms, tsp
from asn1crypto import crl as asn1_crl
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from harness import (
    arguments,
    environment,
    finish_arguments,
    logger,
    markdown_table,
    new_home,
    open_home,
    print_environment,
)

from ca import crl, ocsp
from hsm.der import seq
from signing import tsa


def _ocsp_pair(svc: Any, settings: Any) -> tuple[Callable[[], bytes], Callable[[], bytes], bytes]:
    responder = ocsp.Responder.load(svc.store, svc.keys, settings.ca.issuing_name)
    signature = responder._sign(b"bench")
    responder._sign = lambda _data: signature  # encoding only
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    serial = secrets.randbits(120)
    state = ocsp._state("revoked", "keyCompromise", now, now - dt.timedelta(days=1), now)

    def hand() -> bytes:
        singles = [
            responder._single(responder._cert_id(h, serial), state, now, now)
            for h in responder.presigned_hashes
        ]
        return responder._signed(singles, now)

    expected = hand()
    parsed = asn1_ocsp.OCSPResponse.load(expected)
    basic = parsed["response_bytes"]["response"].parsed
    # What code written against asn1crypto would make once per responder:
    # (loaded afresh and never walked, so asn1crypto reuses their encodings as they are)
    responder_id = asn1_ocsp.ResponderId.load(basic["tbs_response_data"]["responder_id"].dump())
    algorithm = type(basic["signature_algorithm"]).load(basic["signature_algorithm"].dump())
    certs = type(basic["certs"]).load(basic["certs"].untag().dump())
    cert_ids = {h: asn1_ocsp.CertId.load(responder._cert_id(h, 0))
                for h in responder.presigned_hashes}
    revoked_at, invalidity = now, now - dt.timedelta(days=1)

    def by_asn1crypto() -> bytes:
        singles = []
        for h in responder.presigned_hashes:
            issuer = cert_ids[h]
            singles.append({
                "cert_id": {"hash_algorithm": issuer["hash_algorithm"],
                            "issuer_name_hash": issuer["issuer_name_hash"],
                            "issuer_key_hash": issuer["issuer_key_hash"],
                            "serial_number": serial},
                "cert_status": asn1_ocsp.CertStatus(name="revoked", value={
                    "revocation_time": revoked_at, "revocation_reason": "key_compromise"}),
                "this_update": now,
                "next_update": now,
                "single_extensions": [{"extn_id": "invalidity_date", "critical": False,
                                       "extn_value": invalidity}],
            })
        tbs = asn1_ocsp.ResponseData({"responder_id": responder_id, "produced_at": now,
                                      "responses": singles})
        basic = asn1_ocsp.BasicOCSPResponse({
            "tbs_response_data": tbs, "signature_algorithm": algorithm,
            "signature": responder._sign(tbs.dump()), "certs": certs})
        return bytes(asn1_ocsp.OCSPResponse({
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }).dump())

    return hand, by_asn1crypto, expected


def _crl_pair(entries: int) -> tuple[Callable[[], bytes], Callable[[], bytes], bytes]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    reasons = (x509.ReasonFlags.key_compromise, x509.ReasonFlags.superseded, None)
    revoked = [
        crl.Revoked(secrets.randbits(128) or 1, now - dt.timedelta(seconds=i),
                    reasons[i % 3], now - dt.timedelta(days=1) if i % 3 == 0 else None)
        for i in range(entries)
    ]

    def hand() -> bytes:
        return seq(*map(crl._entry, revoked))

    expected = hand()
    names = {x509.ReasonFlags.key_compromise: "key_compromise",
             x509.ReasonFlags.superseded: "superseded"}

    def by_asn1crypto() -> bytes:
        out = []
        for e in revoked:
            entry: dict[str, Any] = {
                "user_certificate": e.serial,
                "revocation_date": asn1_x509.Time(name="utc_time", value=e.revoked_at),
            }
            extensions: list[dict[str, Any]] = []
            if e.reason is not None:
                extensions.append({"extn_id": "crl_reason", "critical": False,
                                   "extn_value": names[e.reason]})
            if e.invalidity_date is not None:
                extensions.append({"extn_id": "invalidity_date", "critical": False,
                                   "extn_value": e.invalidity_date})
            if extensions:
                entry["crl_entry_extensions"] = extensions
            out.append(entry)
        return bytes(asn1_crl.RevokedCertificates(out).dump())

    return hand, by_asn1crypto, expected


def _tsa_pair(svc: Any) -> tuple[Callable[[], bytes], Callable[[], bytes], bytes]:
    authority = tsa.TimeStampAuthority(svc.store, svc.keys, policy_oid=tsa.ETSI_BTSP_POLICY)
    authority.respond(b"")  # loads the signer
    signature = svc.keys.sign_digest
    fixed: dict[str, bytes] = {}

    def stub_sign(key: Any, digest: bytes, alg: Any, scheme: Any) -> bytes:
        if "sig" not in fixed:
            fixed["sig"] = signature(key, digest, alg, scheme)
        return fixed["sig"]

    svc.keys.sign_digest = stub_sign
    authority._reserve_serial = lambda _d, _h, _t: 0x1234567890ABCDEF  # type: ignore[method-assign]
    authority.audit_tokens = False
    query = tsp.TimeStampReq({
        "version": 1,
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": hashlib.sha256(b"bench").digest()},
        "nonce": secrets.randbits(63),
        "cert_req": True,
    }).dump()

    def hand() -> bytes:
        return authority.respond(query)

    response = expected = hand()
    if tsp.TimeStampResp.load(response)["status"]["status"].native != "granted":
        raise RuntimeError("the stubbed TSA did not grant")
    token = tsp.TimeStampResp.load(response)["time_stamp_token"]
    signed = token["content"]
    info = signed["signer_infos"][0]
    tst = signed["encap_content_info"]["content"].parsed
    # Made once per signer by code written against asn1crypto:
    digest_algorithm, signature_algorithm = info["digest_algorithm"], info["signature_algorithm"]
    sid, certificates = info["sid"], signed["certificates"]
    signing_certificate = next(a for a in info["signed_attrs"]
                               if a["type"].native == "signing_certificate_v2")
    policy, accuracy, tsa_name = tst["policy"].native, tst["accuracy"], tst["tsa"]
    imprint = tst["message_imprint"]
    serial, gen_time, nonce = (tst["serial_number"].native, tst["gen_time"].native,
                               tst["nonce"].native)

    def by_asn1crypto() -> bytes:
        content = tsp.TSTInfo({
            "version": "v1", "policy": policy, "message_imprint": imprint,
            "serial_number": serial, "gen_time": gen_time, "accuracy": accuracy,
            "nonce": nonce, "tsa": tsa_name,
        }).dump()
        attrs = [
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute({"type": "message_digest",
                              "values": [hashlib.sha256(content).digest()]}),
            signing_certificate,
        ]
        attrs.sort(key=lambda a: a.dump())  # DER orders a SET OF by encoding
        signed_attrs = cms.CMSAttributes(attrs)
        signer = cms.SignerInfo({
            "version": "v1", "sid": sid, "digest_algorithm": digest_algorithm,
            "signed_attrs": signed_attrs, "signature_algorithm": signature_algorithm,
            "signature": stub_sign(None, hashlib.sha256(signed_attrs.dump()).digest(), None,
                                   None),
        })
        data = cms.SignedData({
            "version": "v3", "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "tst_info",
                                   "content": cms.ParsableOctetString(content)},
            "certificates": certificates, "signer_infos": [signer],
        })
        return bytes(tsp.TimeStampResp({
            "status": {"status": "granted"},
            "time_stamp_token": {"content_type": "signed_data", "content": data},
        }).dump())

    return hand, by_asn1crypto, expected


def measure(pair: tuple[Callable[[], bytes], Callable[[], bytes], bytes], count: int,
            rounds: int) -> dict[str, Any]:
    hand, other, expected = pair
    if other() != expected:
        raise RuntimeError("asn1crypto's bytes differ from the hand-written encoder's")
    us: dict[str, list[float]] = {"hand": [], "asn1crypto": []}
    for r in range(rounds):
        order = (("hand", hand), ("asn1crypto", other))
        for name, fn in order if r % 2 == 0 else reversed(order):
            us[name].append(1e6 * timeit.timeit(fn, number=count) / count)
    ratios = sorted(a / h for h, a in zip(us["hand"], us["asn1crypto"], strict=True))
    return {
        "us_hand": round(sorted(us["hand"])[rounds // 2], 2),
        "us_asn1crypto": round(sorted(us["asn1crypto"])[rounds // 2], 2),
        "asn1crypto_over_hand_median": round(ratios[rounds // 2], 2),
        "asn1crypto_over_hand_min": round(ratios[0], 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = arguments(__doc__, count=2000, rounds=5, what="encodings", quick=(50, 2))
    p.add_argument("--entries", type=int, default=10_000, help="CRL entries (10000)")
    args = finish_arguments(p, p.parse_args(argv), quick=(50, 2))
    if args.quick:
        args.entries = 500
    log = logger(args.json)
    load_at_start = os.getloadavg()
    tmp, home = new_home("der", log)
    settings, svc, _app = open_home(home)
    try:
        results = {
            "ocsp": measure(_ocsp_pair(svc, settings), args.count, args.rounds),
            "crl": measure(_crl_pair(args.entries), max(1, args.count // 1000), args.rounds),
            "tsa": measure(_tsa_pair(svc), args.count, args.rounds),
        }
    finally:
        svc.close()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    env = environment(load_at_start, packages=("asn1crypto",), count=args.count,
                      rounds=args.rounds, crl_entries=args.entries)
    if args.json:
        print(json.dumps({"environment": env, "results": results}, indent=2))
        return 0
    print()
    print_environment(env, ("date", "git", "nproc", "python", "asn1crypto", "loadavg_at_start",
                            "loadavg_at_end"))
    print()
    print(markdown_table(
        ("structure", "hand µs", "asn1crypto µs", "asn1crypto / hand (median)", "min",
         "hand-written survives (>= 2x)"),
        [(name, f"{r['us_hand']:.1f}", f"{r['us_asn1crypto']:.1f}",
          f"{r['asn1crypto_over_hand_median']:.2f}", f"{r['asn1crypto_over_hand_min']:.2f}",
          "yes" if r["asn1crypto_over_hand_min"] >= 2 else "no")
         for name, r in results.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
