"""JSON records sealed per second (JAdES B-B and B-T), single and batched, beside the raw HSM
sign rate for the same key and a trivial Flask endpoint.

Peers, all in one process, one run, taking turns round by round (order reversed every other
round) so drift on a shared machine hits them alike:

- ``hsm-sign``: ``keys.sign_digest`` with the school's hosted P-256 key over a fresh SHA-256
  digest: the floor of any seal (B-B is one such signature per record).
- ``tsa-token``: ``signing.tsa.timestamp_token`` alone (the TSA key signs in the same HSM, and
  the serial is recorded in the database first): the second floor for B-T.
- ``bb-single`` / ``bt-single``: ``signing.jades.seal_json`` per record (B-T: one token each).
- ``bb-batch`` / ``bt-batch``: ``seal_batch`` of ``--batch`` records; rates are per record.
- ``http-trivial``: a Flask endpoint that reads the body and answers ``{"ok": true}``.
- ``http-bb-single``: a Flask endpoint on the same server calling ``seal_json`` on the body
  with a credential looked up once (it leaves out what the real endpoint adds per request:
  token check, credential lookup, audit entry; those are timed separately below).
- ``http-bb-batch``: the same with ``--batch`` records as JSON Lines per request.
- ``http-api`` (only if ``POST /api/v1/seal/json`` exists in kakuin's app): the real endpoint,
  body = the record, school-system token.

HTTP peers share one client (``http.client``, a new loopback connection per request, as
werkzeug's dev server closes after each response) and werkzeug servers with
``threaded=False``. Setup (untimed): a temporary home and the real key ceremony (``kakuin
--home <tmp> init`` as a subprocess, SoftHSM token under the home), a board and a school, a
hosted P-256 e-seal requested and approved over the real API. Records are ~1.4 KB of Japanese
school data, distinct per seal. Every seal made is verified afterwards (``verify_jws``: the
signature, x5c path to the root, sigTst token and its TSA path).

    .venv/bin/python bench/seal_json.py [--count 300] [--batch 100] [--rounds 10] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, request
from harness import (
    InProcessServer,
    arguments,
    bootstrap,
    call,
    environment,
    hosted_seal,
    logger,
    markdown_table,
    new_home,
    open_home,
    print_environment,
    remove,
    split,
)

from ca import status
from hsm.api import HashAlg, SignScheme
from signing import jades
from signing.tsa import ETSI_BTSP_POLICY, TimeStampAuthority, timestamp_token

WARMUP = 5


@dataclass
class Peer:
    name: str
    per_record: bool = True  # batch peers: time per record = batch time / batch size
    seconds: float = 0.0
    records: int = 0
    by_round: list[float] = field(default_factory=list)  # records/s per round

    @property
    def per_s(self) -> float:
        return self.records / self.seconds

    @property
    def ms(self) -> float:
        return 1000 * self.seconds / self.records

    def summary(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "records_per_s": round(self.per_s, 1),
            "ms_per_record": round(self.ms, 3),
            "records_per_s_by_round": [round(x, 1) for x in self.by_round],
        }


def make_records(n: int, start: int = 0) -> list[bytes]:
    """Distinct, realistic records (a cumulative guidance record summary, ~1.4 KB)."""
    out = []
    for i in range(start, start + n):
        record = {
            "type": "指導要録（抄本）",
            "schema": "urn:example:kakuin:shido-yoroku:1",
            "school": {"code": "C113210000010", "name": "新宿区立第一中学校"},
            "student": {
                "id": f"S2026-{i:06d}",
                "name": "山田 花子",
                "kana": "ヤマダ ハナコ",
                "birth": "2011-04-02",
            },
            "year": 2026,
            "grade": 3,
            "class": "B",
            "attendance": {"days": 200, "absent": i % 7, "late": i % 3},
            "subjects": [
                {"name": n, "viewpoints": ["A", "A", "B"], "rating": 3 + (i + k) % 3}
                for k, n in enumerate(
                    [
                        "国語",
                        "社会",
                        "数学",
                        "理科",
                        "音楽",
                        "美術",
                        "保健体育",
                        "技術・家庭",
                        "外国語",
                    ]
                )
            ],
            "remarks": "学級委員として学級をまとめ、文化祭では実行委員長を務めた。" * 2,
            "issued": "2027-03-15T09:00:00+09:00",
        }
        out.append(json.dumps(record, ensure_ascii=False, indent=1).encode())
    return out


# -- HTTP ----------------------------------------------------------------------------------------


def post(port: int, path: str, body: bytes, ctype: str, token: str | None = None) -> bytes:
    status_, raw = call(port, "POST", path, token, body, ctype)
    if status_ not in (200, 201):
        raise RuntimeError(f"POST {path}: HTTP {status_}: {raw[:300]!r}")
    return raw


def bench_app(credential: status.Credential, keys: Any) -> Flask:
    app = Flask("bench-seal-json")

    @app.post("/trivial")
    def trivial() -> Any:
        request.get_data()
        return jsonify({"ok": True})

    @app.post("/seal")
    def seal() -> Any:
        return jsonify(jades.seal_json(request.get_data(), credential, keys))

    @app.post("/seal-batch")
    def seal_batch() -> Any:
        records = request.get_data().splitlines()
        return jsonify(jades.seal_batch(records, credential, keys))

    return app


# -- setup ---------------------------------------------------------------------------------------


def per_call_ms(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return round(1000 * (time.perf_counter() - t0) / n, 3)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = arguments(__doc__, count=300, rounds=10, what="records per single peer")
    p.add_argument("--batch", type=int, default=100, help="records per batch (100)")
    p.add_argument("--batches", type=int, default=10, help="batches per batch peer (10)")
    args = p.parse_args(argv)
    if args.quick:
        args.count, args.batch, args.batches, args.rounds = 6, 10, 2, 2
    if args.count < args.rounds or args.batches < args.rounds or args.rounds < 1:
        p.error("--count and --batches must be >= --rounds >= 1")
    if args.batch < 1 or args.batch > jades.MAX_BATCH:
        p.error(f"--batch must be 1..{jades.MAX_BATCH}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logger(args.json)
    load_at_start = os.getloadavg()
    tmp, home = new_home("seal-json", log)
    svc: Any = None
    servers: list[InProcessServer] = []
    try:
        _settings, svc, kakuin_app = open_home(home)
        kakuin_server = InProcessServer(kakuin_app)
        servers.append(kakuin_server)
        tokens = bootstrap(svc)
        hosted_seal(kakuin_server.port, tokens)
        school_id, school_token = tokens.school_id, tokens.school
        keys = svc.keys
        credential = status.seal_credential(svc.store, school_id)
        ref = keys.find(key_id=credential.key_id)
        authority = TimeStampAuthority(svc.store, keys, policy_oid=ETSI_BTSP_POLICY)

        def tsa(data: bytes) -> bytes:
            return timestamp_token(authority, data).dump()

        api_wired = any(r.rule == "/api/v1/seal/json" for r in kakuin_app.url_map.iter_rules())
        bench_server = InProcessServer(bench_app(credential, keys))
        servers.append(bench_server)

        singles = [
            "hsm-sign",
            "tsa-token",
            "bb-single",
            "bt-single",
            "http-trivial",
            "http-bb-single",
        ] + (["http-api"] if api_wired else [])
        batches = ["bb-batch", "bt-batch", "http-bb-batch"]
        peers = {p: Peer(p) for p in [*singles, *batches]}
        sealing_peers = ["bb-single", "bt-single", "http-bb-single", *batches]
        made: dict[str, list[dict[str, Any]]] = {p: [] for p in sealing_peers}
        records_needed = (
            len(singles) * (args.count + WARMUP) + len(batches) * (args.batches + 1) * args.batch
        )
        log(f"making {records_needed} records")
        pool = make_records(records_needed)
        cursor = 0

        def take(n: int) -> list[bytes]:
            nonlocal cursor
            out = pool[cursor : cursor + n]
            cursor += n
            return out

        def one(peer: str, record: bytes) -> Any:
            if peer == "hsm-sign":
                digest = hashlib.sha256(record).digest()
                return keys.sign_digest(ref, digest, HashAlg.SHA256, SignScheme.ECDSA)
            if peer == "tsa-token":
                return tsa(record)
            if peer == "bb-single":
                return [jades.seal_json(record, credential, keys)]
            if peer == "bt-single":
                return [jades.seal_json(record, credential, keys, level="B-T", timestamp=tsa)]
            if peer == "http-trivial":
                return post(bench_server.port, "/trivial", record, "application/json")
            if peer == "http-bb-single":
                return [json.loads(post(bench_server.port, "/seal", record, "application/json"))]
            if peer == "http-api":
                return post(
                    kakuin_server.port,
                    "/api/v1/seal/json",
                    record,
                    "application/json",
                    school_token,
                )
            raise AssertionError(peer)

        def many(peer: str, records: list[bytes]) -> list[dict[str, Any]]:
            if peer == "bb-batch":
                return jades.seal_batch(records, credential, keys)
            if peer == "bt-batch":
                return jades.seal_batch(records, credential, keys, level="B-T", timestamp=tsa)
            if peer == "http-bb-batch":
                body = b"\n".join(r.replace(b"\n", b"") for r in records)
                out: list[dict[str, Any]] = json.loads(
                    post(bench_server.port, "/seal-batch", body, "application/x-ndjson")
                )
                return out
            raise AssertionError(peer)

        def run(peer: str, n: int, *, record: bool) -> None:
            p = peers[peer]
            if peer in singles:
                recs = take(n)
                t0 = time.perf_counter()
                results = [one(peer, r) for r in recs]
                elapsed = time.perf_counter() - t0
                count = n
                sealed = [s for r in results if isinstance(r, list) for s in r]
            else:
                batches_ = [take(args.batch) for _ in range(n)]
                t0 = time.perf_counter()
                sealed = [s for b in batches_ for s in many(peer, b)]
                elapsed = time.perf_counter() - t0
                count = n * args.batch
            if record:
                p.seconds += elapsed
                p.records += count
                p.by_round.append(count / elapsed)
                if peer in made:
                    made[peer].extend(sealed)

        log("warm-up")
        for peer in singles:
            run(peer, WARMUP, record=False)
        for peer in batches:
            run(peer, 1, record=False)
        single_split, batch_split = split(args.count, args.rounds), split(args.batches, args.rounds)
        order = [*singles, *batches]
        for r in range(args.rounds):
            for peer in order if r % 2 == 0 else reversed(order):
                run(peer, single_split[r] if peer in singles else batch_split[r], record=True)
            log(
                f"round {r + 1}/{args.rounds}: "
                + "  ".join(f"{p} {peers[p].by_round[-1]:.0f}/s" for p in order)
            )

        log("verifying every seal")
        root = status.ca_chain(svc.store)[-1]
        checked = 0
        for peer, sealed in made.items():
            want = "B-T" if peer.startswith("bt") else "B-B"
            for jws in sealed:
                if jades.verify_jws(jws, [root]).level != want:
                    raise RuntimeError(f"{peer}: not {want}")
                checked += 1

        log("per-request costs the real endpoint adds")
        header = f"Bearer {school_token}"
        extra = {
            "authenticate_header_ms": per_call_ms(
                lambda: status.authenticate_header(svc.store, header),
                200,
            ),
            "seal_credential_ms": per_call_ms(
                lambda: status.seal_credential(svc.store, school_id),
                200,
            ),
            "audit_record_ms": per_call_ms(
                lambda: status.record(
                    svc.store,
                    actor="bench",
                    action="seal.json",
                    organization_id=school_id,
                    digest="00" * 32,
                ),
                200,
            ),
            "canonicalize_ms": per_call_ms(lambda: jades.canonicalize(pool[0]), 500),
            "verify_jws_bb_ms": per_call_ms(
                lambda: jades.verify_jws(made["bb-single"][0], [root]), 200
            ),
        }
    finally:
        for srv in servers:
            srv.close()
        if svc is not None:
            svc.close()
        remove(tmp, args.keep, log)

    def rate(p: str) -> float:
        return peers[p].per_s

    two_signatures = 1 / (1 / rate("hsm-sign") + 1 / rate("tsa-token"))
    ratios: dict[str, Any] = {
        "http_bb_single_over_http_trivial": round(rate("http-bb-single") / rate("http-trivial"), 3),
        "bb_single_over_http_trivial": round(rate("bb-single") / rate("http-trivial"), 3),
        "bb_batch_over_hsm_sign": round(rate("bb-batch") / rate("hsm-sign"), 3),
        "http_bb_batch_over_hsm_sign": round(rate("http-bb-batch") / rate("hsm-sign"), 3),
        "bb_single_over_hsm_sign": round(rate("bb-single") / rate("hsm-sign"), 3),
        "bt_batch_over_hsm_sign": round(rate("bt-batch") / rate("hsm-sign"), 3),
        "bt_batch_over_two_signature_floor": round(rate("bt-batch") / two_signatures, 3),
        "bt_single_over_two_signature_floor": round(rate("bt-single") / two_signatures, 3),
        "jades_overhead_ms_per_record_bb_batch": round(
            peers["bb-batch"].ms - peers["hsm-sign"].ms, 3
        ),
    }
    if api_wired:
        ratios["http_api_over_http_trivial"] = round(rate("http-api") / rate("http-trivial"), 3)

    def by_round(a: str, b: str) -> dict[str, float]:
        """The ratio within each round (neighbours in time), summarised: drift cancels."""
        xs = [x / y for x, y in zip(peers[a].by_round, peers[b].by_round, strict=True)]
        return {
            "min": round(min(xs), 3),
            "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3),
        }

    for a, b in (
        ("http-bb-single", "http-trivial"),
        ("bb-batch", "hsm-sign"),
        ("http-bb-batch", "hsm-sign"),
    ):
        ratios[f"{a}_over_{b}_by_round".replace("-", "_")] = by_round(a, b)
    if api_wired:
        ratios["http_api_over_http_trivial_by_round"] = by_round("http-api", "http-trivial")
    env = environment(
        load_at_start, packages=("cryptography", "flask", "werkzeug"),
        tools={"openssl": ["openssl", "version"], "softhsm": ["softhsm2-util", "--version"]},
        count=args.count, batch=args.batch, batches=args.batches, rounds=args.rounds,
        real_endpoint_measured=api_wired, seals_verified=checked,
    )
    if args.json:
        print(
            json.dumps(
                {
                    "environment": env,
                    "peers": {p: v.summary() for p, v in peers.items()},
                    "ratios": ratios,
                    "per_request_ms": extra,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print()
    print_environment(env)
    print()
    print(table(peers))
    print()
    for k, v in {**ratios, **extra}.items():
        print(f"{k}: {v}")
    return 0


def table(peers: dict[str, Peer]) -> str:
    head = ("peer", "records", "records/s", "ms/record", "records/s by round (min-max)")
    rows = [
        (p.name, str(p.records), f"{p.per_s:.1f}", f"{p.ms:.3f}",
         f"{min(p.by_round):.0f}-{max(p.by_round):.0f}")
        for p in peers.values()
    ]
    return markdown_table(head, rows, left=(0, 4))


if __name__ == "__main__":
    sys.exit(main())
