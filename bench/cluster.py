"""Sealing throughput through nginx with 1, 2 and 3 kakuin nodes (scripts/cluster.py).

PDF (B-LTA: signature, timestamp from kakuin's TSA, revocation data; the 3-page 指導要録 of
tests/fixtures_pdf.py) and JSON (JAdES B-B, one record) sealed over HTTP through the front by
``--clients`` concurrent clients for ``--seconds`` each, for each node count. Nodes run one
gunicorn worker each (SoftHSM: one session per process), share one fresh PostgreSQL database
and one SoftHSM token in a temporary home (the real key ceremony, untimed). On a machine with
fewer cores than nodes the scaling is bounded by the cores, not by kakuin: the report prints
the core count and load so the numbers can be read honestly.

    .venv/bin/python bench/cluster.py [--nodes 1,2,3] [--seconds 5] [--clients 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ca import clients, registry  # noqa: E402
from ca.store import Store  # noqa: E402
from tests.fixtures_pdf import guidance_record  # noqa: E402

SCRIPT = REPO / "scripts" / "cluster.py"
PG = os.environ.get("KAKUIN_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _post(url: str, body: bytes, ctype: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 (our http URL)
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 'filename="record.pdf"\r\nContent-Type: application/pdf\r\n\r\n'.encode()
                 + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def measure(seconds: float, n_clients: int, call: Any) -> dict[str, float]:
    stop = time.monotonic() + seconds
    done, errors = [0] * n_clients, [0] * n_clients

    def client(i: int) -> None:
        while time.monotonic() < stop:
            if call() == 200:
                done[i] += 1
            else:
                errors[i] += 1

    start = time.monotonic()
    pool = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - start
    return {"per_s": round(sum(done) / elapsed, 1), "ok": sum(done), "errors": sum(errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    db = f"kakuin_bench_{secrets.token_hex(4)}"
    url = f"{PG}/{db}"
    pdf = guidance_record()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        token = ""
        for n in (int(x) for x in args.nodes.split(",")):
            front, *nodes = _free_ports(n + 1)
            started = subprocess.run(
                [sys.executable, str(SCRIPT), "start", "--home", str(home), "--front-port",
                 str(front), "--nodes", ",".join(map(str, nodes)), "--database-url", url,
                 "--workers", "1"],
                capture_output=True, text=True,
                env={**os.environ, "KAKUIN_LOG_LEVEL": "WARNING"})
            if started.returncode != 0:
                raise SystemExit(started.stdout + started.stderr)
            base = f"http://127.0.0.1:{front}"
            try:
                if not token:
                    token = _setup(url, base)
                body, ctype = _multipart({"level": "B-LTA"}, pdf)
                record = json.dumps({"種別": "指導要録", "氏名": "山田 花子"},
                                    ensure_ascii=False).encode()
                row: dict[str, Any] = {"nodes": n}
                row["pdf_b_lta"] = measure(args.seconds, args.clients, lambda b=base, d=body,
                                           c=ctype, t=token: _post(
                    f"{b}/api/v1/seal/pdf", d, c, t)[0])
                row["json_b_b"] = measure(args.seconds, args.clients, lambda b=base, r=record,
                                          t=token: _post(
                    f"{b}/api/v1/seal/json?level=B-B", r, "application/json", t)[0])
                row["load1"] = round(os.getloadavg()[0], 2)
                results.append(row)
            finally:
                subprocess.run([sys.executable, str(SCRIPT), "stop", "--home", str(home)],
                               capture_output=True, check=False)
        _drop(url)
    report = {"cpus": os.cpu_count(), "clients": args.clients, "seconds": args.seconds,
              "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['cpus']} CPUs, {args.clients} clients, {args.seconds} s per peer")
    print("| nodes | PDF B-LTA seals/s | JSON B-B seals/s | errors | load1 |")
    print("|------:|------------------:|-----------------:|-------:|------:|")
    for r in results:
        print(f"| {r['nodes']:5} | {r['pdf_b_lta']['per_s']:17} | {r['json_b_b']['per_s']:16} |"
              f" {r['pdf_b_lta']['errors'] + r['json_b_b']['errors']:6} | {r['load1']:5} |")


def _setup(url: str, base: str) -> str:
    """A board and a school with a hosted e-seal approved through the front; the school's
    API token."""
    store = Store(url)
    with store.session() as s:
        board = registry.add_board(s, name_ja="ベンチ市教育委員会", local_gov_code="131016",
                                   actor="bench")
        school = registry.add_school(s, name_ja="ベンチ市立第一小学校",
                                     school_code="B113200000010", board_id=board.id,
                                     actor="bench")
        _, officer = clients.create_client(s, organization_id=board.id,
                                           role="board-officer", name="o", actor="bench")
        _, token = clients.create_client(s, organization_id=school.id, role="school-system",
                                         name="s", actor="bench")
    store.dispose(close=True)
    code, raw = _post(f"{base}/api/v1/seal-requests",
                      json.dumps({"key": {"hosted": True}}).encode(), "application/json", token)
    assert code == 201, raw
    req = json.loads(raw)
    code, raw = _post(f"{base}/api/v1/seal-requests/{req['id']}/approve", b"{}",
                      "application/json", officer)
    assert code == 200, raw
    return token


def _drop(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    admin = create_engine(f"{PG}/postgres", poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


if __name__ == "__main__":
    main()
