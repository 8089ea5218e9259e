"""TSA serial register: one durable transaction per token against group commit.

The register was most of a token's cost (0.87 of 1.25 ms in bench/tsa.py). This measures the
register alone, as the TSA drives it, with T threads of one process (a threaded worker)
inserting rows that must be durable on return: ``per-token`` is ``record_tsa_serial`` without
a register (one transaction each), ``group`` with ``ca.groupcommit.TsaSerialRegister``.
SQLite file (WAL, synchronous FULL, as ca/store.py configures it) and PostgreSQL (when
reachable; KAKUIN_TEST_POSTGRES_URL or the local server), fresh schema each.

    .venv/bin/python bench/tsa_groupcommit.py [--threads 8] [--rows 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ca import status
from ca.groupcommit import TsaSerialRegister
from ca.store import Store, upgrade
from tests.dbutil import database


def run(store: Store, threads: int, rows: int, register: TsaSerialRegister | None) -> float:
    barrier = threading.Barrier(threads + 1)
    each = rows // threads

    def worker() -> None:
        barrier.wait()
        for _ in range(each):
            status.record_tsa_serial(store, secrets.randbits(127) or 1, imprint_hex="ab" * 32,
                                     hash_algorithm="sha256", policy_oid="0.4.0.2023.1.1",
                                     issued_at=datetime.now(UTC), register=register)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return each * threads / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sqlite", "postgresql"):
            try:
                ctx = database(kind, Path(tmp))
                url = ctx.__enter__()
            except BaseException as exc:  # pytest.skip outside pytest: no PostgreSQL here
                print(f"{kind}: skipped ({exc})", file=sys.stderr)
                continue
            try:
                upgrade(url)
                store = Store(url)
                run(store, 2, 20, None)  # warm-up: connections, statement caches
                for threads in (1, args.threads):
                    # Rounds alternate so drift on a shared machine hits both alike; best kept.
                    register = TsaSerialRegister(store)
                    plain = group = 0.0
                    for _ in range(3):
                        plain = max(plain, run(store, threads, args.rows, None))
                        group = max(group, run(store, threads, args.rows, register))
                    results.append({
                        "database": kind, "threads": threads,
                        "per_token_rows_s": round(plain), "group_rows_s": round(group),
                        "speedup": round(group / plain, 2),
                        "mean_batch": round(register.rows / max(register.batches, 1), 1)})
                store.dispose(close=True)
            finally:
                ctx.__exit__(None, None, None)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("| database   | threads | per-token rows/s | group rows/s | speedup | mean batch |")
    print("|:-----------|--------:|-----------------:|-------------:|--------:|-----------:|")
    for r in results:
        print(f"| {r['database']:10} | {r['threads']:7} | {r['per_token_rows_s']:16} |"
              f" {r['group_rows_s']:12} | {r['speedup']:7} | {r['mean_batch']:10} |")


if __name__ == "__main__":
    main()
