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

    .venv/bin/python bench/seal_json.py [--count 300] [--batch 100] [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cryptography
from flask import Flask, jsonify, request

from ca import clients, registry, status
from hsm.api import HashAlg, SignScheme
from kakuin.app import create_app
from kakuin.services import Services
from kakuin.settings import load_settings
from signing import jades
from signing.tsa import ETSI_BTSP_POLICY, TimeStampAuthority, timestamp_token

REPO = Path(__file__).resolve().parent.parent
KAKUIN = Path(sys.executable).parent / "kakuin"
BASE_URL = "http://pki.example.com"  # the ETSI lint refuses internal names in AIA/CDP URLs
TIMEOUT = 60
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


class InProcessServer:
    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=False)
        self.port: int = self.server.server_port
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join()


def post(port: int, path: str, body: bytes, ctype: str, token: str | None = None) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        headers = {"Content-Type": ctype}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status not in (200, 201):
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {raw[:300]!r}")
        return raw
    finally:
        conn.close()


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


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAKUIN_")}
    env.pop("SOFTHSM2_CONF", None)
    return env


def hosted_eseal(svc: Services, kakuin_port: int) -> tuple[int, str]:
    """A board, a school and its hosted P-256 e-seal, requested and approved over the API."""
    with svc.store.session() as s:
        board = registry.add_board(
            s, name_ja="新宿区教育委員会", local_gov_code="131041", actor="bench"
        )
        school = registry.add_school(
            s,
            name_ja="新宿区立第一中学校",
            school_code="C113210000010",
            board_id=board.id,
            actor="bench",
        )
        _, officer = clients.create_client(
            s, organization_id=board.id, role="board-officer", name="officer", actor="bench"
        )
        _, system = clients.create_client(
            s, organization_id=school.id, role="school-system", name="system", actor="bench"
        )
        school_id = school.id
    body = json.dumps({"key": {"hosted": True, "algorithm": "ECDSA-P256"}}).encode()
    req = json.loads(post(kakuin_port, "/api/v1/seal-requests", body, "application/json", system))
    post(
        kakuin_port, f"/api/v1/seal-requests/{req['id']}/approve", b"", "application/json", officer
    )
    return school_id, system


def per_call_ms(fn: Callable[[], Any], n: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return round(1000 * (time.perf_counter() - t0) / n, 3)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--count", type=int, default=300, help="records per single peer (300)")
    p.add_argument("--batch", type=int, default=100, help="records per batch (100)")
    p.add_argument("--batches", type=int, default=10, help="batches per batch peer (10)")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds (10)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = p.parse_args(argv)
    if args.count < args.rounds or args.batches < args.rounds or args.rounds < 1:
        p.error("--count and --batches must be >= --rounds >= 1")
    if args.batch < 1 or args.batch > jades.MAX_BATCH:
        p.error(f"--batch must be 1..{jades.MAX_BATCH}")
    return args


def split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log: Callable[[str], None] = (
        (lambda s: print(s, file=sys.stderr, flush=True))
        if args.json
        else (lambda s: print(s, flush=True))
    )
    os.environ.pop("KAKUIN_HSM_PIN", None)
    load_at_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="kakuin-bench-seal-json-"))
    home = tmp / "home"
    home.mkdir(mode=0o700)
    (home / "kakuin.toml").write_text(f'[server]\nbase_url = "{BASE_URL}"\n')
    svc: Services | None = None
    servers: list[InProcessServer] = []
    try:
        log(f"key ceremony: kakuin --home {home} init")
        done = subprocess.run(
            [str(KAKUIN), "--home", str(home), "init"],
            capture_output=True,
            text=True,
            env=_child_env(),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kakuin init failed:\n{done.stdout}{done.stderr}")
        settings = load_settings(home)
        svc = Services.build(settings)
        kakuin_app = create_app(settings, svc)
        request_log = (home / "requests.log").open("a")
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler):
                h.setStream(request_log)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        kakuin_server = InProcessServer(kakuin_app)
        servers.append(kakuin_server)
        school_id, school_token = hosted_eseal(svc, kakuin_server.port)
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
        for s in servers:
            s.stop()
        if svc is not None:
            svc.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

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
    env = environment(args, load_at_start, api_wired, checked)
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
    for k, v in env.items():
        print(f"{k}: {v}")
    print()
    print(table(peers))
    print()
    for k, v in {**ratios, **extra}.items():
        print(f"{k}: {v}")
    return 0


def environment(
    args: argparse.Namespace, load_at_start: Sequence[float], api_wired: bool, checked: int
) -> dict[str, Any]:
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "unknown"

    def first_line(cmd: Sequence[str]) -> str:
        if shutil.which(cmd[0]) is None:
            return "unknown"
        out = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[0] if lines else "unknown"

    head = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "git": head + (" (dirty tree)" if dirty else ""),
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "flask": v("flask"),
        "werkzeug": v("werkzeug"),
        "openssl": first_line(["openssl", "version"]),
        "softhsm": first_line(["softhsm2-util", "--version"]),
        "loadavg_at_start": [round(x, 2) for x in load_at_start],
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "count": args.count,
        "batch": args.batch,
        "batches": args.batches,
        "rounds": args.rounds,
        "real_endpoint_measured": api_wired,
        "seals_verified": checked,
    }


def table(peers: dict[str, Peer]) -> str:
    head = ("peer", "records", "records/s", "ms/record", "records/s by round (min-max)")
    rows = [
        (
            p.name,
            str(p.records),
            f"{p.per_s:.1f}",
            f"{p.ms:.3f}",
            f"{min(p.by_round):.0f}-{max(p.by_round):.0f}",
        )
        for p in peers.values()
    ]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]

    def line(cols: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w)
                for i, (c, w) in enumerate(zip(cols, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join(
            (":" + "-" * (w + 1)) if i in (0, 4) else ("-" * (w + 1) + ":")
            for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


if __name__ == "__main__":
    sys.exit(main())
