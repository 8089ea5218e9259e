"""Cluster scheduler lease: one claim per period across workers on separate engines."""

from __future__ import annotations

import threading
import time

from ca.scheduler import ClusterScheduler, runs
from ca.store import Store
from tests.dbutil import db_url, store  # noqa: F401

WORKERS = 6
INTERVAL = 10.0


def _race(url: str, now: float) -> list[bool]:
    """WORKERS schedulers, each on its own engine (a node), claim the same period at once."""
    stores = [Store(url) for _ in range(WORKERS)]
    schedulers = [ClusterScheduler(s, INTERVAL, holder=f"node{i}") for i, s in enumerate(stores)]
    barrier = threading.Barrier(WORKERS)
    won = [False] * WORKERS

    def worker(i: int) -> None:
        barrier.wait()
        claim = schedulers[i].claim(now=now)
        if claim is not None:
            won[i] = True
            schedulers[i].finish(claim, ok=True, summary={"by": i})

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.dispose(close=True)
    return won


def test_exactly_one_claim_per_period_across_engines(store: Store) -> None:  # noqa: F811
    url = store.engine.url.render_as_string(hide_password=False)
    base = (time.time() // INTERVAL + 1) * INTERVAL  # start of a future period
    for period in range(3):
        # The first period creates the row (insert race), later ones update it.
        won = _race(url, base + period * INTERVAL + 0.5)
        assert sum(won) == 1, won
    # A second try inside the same period, after the winner released, still loses.
    late = ClusterScheduler(store, INTERVAL, holder="late")
    assert late.claim(now=base + 2 * INTERVAL + 9) is None
    recorded = runs(store)
    assert [r.period_start_ms for r in recorded] == [
        round((base + p * INTERVAL) * 1000) for p in range(3)]
    assert all(r.outcome == "ok" and r.finished_at is not None for r in recorded)


def test_dead_holder_blocks_until_its_lease_expires(store: Store) -> None:  # noqa: F811
    base = (time.time() // INTERVAL + 1) * INTERVAL
    dead = ClusterScheduler(store, INTERVAL, holder="dead", lease_seconds=25)
    other = ClusterScheduler(store, INTERVAL, holder="other", lease_seconds=25)
    assert dead.claim(now=base + 1) is not None  # never finishes: the node was killed
    assert other.claim(now=base + INTERVAL + 1) is None  # lease still running
    assert other.claim(now=base + 2 * INTERVAL + 1) is None
    claim = other.claim(now=base + 3 * INTERVAL + 1)  # lease expired at base + 26
    assert claim is not None and claim.holder == "other"
    other.finish(claim, ok=False, summary={"error": "x"})
    outcomes = [(r.holder, r.outcome) for r in runs(store)]
    assert outcomes == [("dead", "running"), ("other", "failed")]
