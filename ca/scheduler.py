"""One scheduler per cluster: a lease row in the shared database decides who runs each period.

Every worker of every node runs a maintenance thread (so the work survives any node dying),
but periodic jobs (CRLs, OCSP re-signing, signer renewal, trust-list refresh, reconciler)
must run once per period for the whole cluster. Time is cut into periods of ``interval``
seconds (aligned on the epoch, so all nodes agree on the boundaries given NTP-synchronised
clocks, which the TSA needs anyway). At each period a worker tries to claim the lease with a
conditional ``UPDATE ... WHERE period_start_ms < :period AND expires_at_ms <= :now``: the
database serialises the updates, so exactly one gets a row count of 1. It runs the job,
records it in ``scheduler_runs`` and releases the lease (expiry = now).

Why not a PostgreSQL advisory lock: it is held by a connection, so it needs a dedicated
connection per worker and says nothing about *which period* ran; a row works the same on
SQLite (single host) and PostgreSQL and leaves a record. A holder that dies keeps the lease
until ``expires_at`` (one interval, at least ``MIN_LEASE_SECONDS``); the next period after
that is claimed normally. A job running longer than its lease may overlap the next period's
run: the jobs are idempotent and safe to run concurrently, the lease only avoids waste.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, insert, select, update
from sqlalchemy.exc import IntegrityError

from ca.models import SchedulerLease, SchedulerRun
from ca.store import Store

MIN_LEASE_SECONDS = 60.0
MAX_SUMMARY_CHARS = 2000


def default_holder() -> str:
    """host:pid:random, so two workers (or a restarted one) never share an identity."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Claim:
    """This worker's turn for one period of one job."""

    name: str
    holder: str
    period_start_ms: int
    run_id: int


class ClusterScheduler:
    """Claims, runs and records the periods of one named job over a shared ``Store``."""

    def __init__(
        self, store: Store, interval: float, *, name: str = "maintenance",
        holder: str | None = None, lease_seconds: float | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.store = store
        self.name = name
        self.interval_ms = max(1, round(interval * 1000))
        self.holder = holder or default_holder()
        self.lease_ms = round(1000 * (lease_seconds if lease_seconds is not None
                                      else max(interval, MIN_LEASE_SECONDS)))

    def period_start_ms(self, now_ms: int) -> int:
        return now_ms - now_ms % self.interval_ms

    def seconds_until_next_period(self, now: float | None = None) -> float:
        now_ms = round(1000 * (time.time() if now is None else now))
        return (self.period_start_ms(now_ms) + self.interval_ms - now_ms) / 1000

    def claim(self, now: float | None = None) -> Claim | None:
        """This worker's claim on the current period, or ``None`` if another has it."""
        now_ms = round(1000 * (time.time() if now is None else now))
        period = self.period_start_ms(now_ms)
        values = {"holder": self.holder, "period_start_ms": period,
                  "expires_at_ms": now_ms + self.lease_ms}
        with self.store.session() as session:
            result = session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == self.name,
                       SchedulerLease.period_start_ms < period,
                       SchedulerLease.expires_at_ms <= now_ms)
                .values(**values)
                .execution_options(synchronize_session=False))
            won = cast("CursorResult[Any]", result).rowcount == 1
            if not won:
                if session.get(SchedulerLease, self.name) is not None:
                    return None
                try:  # first run ever of this job: the one insert that lands wins
                    with session.begin_nested():
                        session.execute(insert(SchedulerLease).values(name=self.name, **values))
                except IntegrityError:
                    return None
            run_id = session.execute(
                insert(SchedulerRun).values(
                    name=self.name, period_start_ms=period, holder=self.holder,
                    started_at=datetime.now(UTC), outcome="running")
                .returning(SchedulerRun.id)
            ).scalar_one()
        return Claim(self.name, self.holder, period, run_id)

    def finish(self, claim: Claim, *, ok: bool, summary: dict[str, Any] | None = None) -> None:
        """Record the run's outcome and release the lease for the next period."""
        text = None if summary is None else json.dumps(
            summary, default=str, ensure_ascii=False)[:MAX_SUMMARY_CHARS]
        with self.store.session() as session:
            session.execute(
                update(SchedulerRun).where(SchedulerRun.id == claim.run_id)
                .values(finished_at=datetime.now(UTC), outcome="ok" if ok else "failed",
                        summary=text)
                .execution_options(synchronize_session=False))
            session.execute(
                update(SchedulerLease)
                .where(SchedulerLease.name == claim.name, SchedulerLease.holder == claim.holder,
                       SchedulerLease.period_start_ms == claim.period_start_ms)
                .values(expires_at_ms=round(time.time() * 1000))
                .execution_options(synchronize_session=False))


def runs(store: Store, name: str = "maintenance") -> list[SchedulerRun]:
    """Recorded runs of a job, oldest period first (for operators and tests)."""
    with store.session() as session:
        return list(session.scalars(
            select(SchedulerRun).where(SchedulerRun.name == name)
            .order_by(SchedulerRun.period_start_ms, SchedulerRun.id)))
