"""TSA serial register group commit: concurrent rows in shared commits, each durable on return."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from ca.errors import Conflict
from ca.groupcommit import TsaSerialRegister
from ca.models import TsaSerial
from ca.store import Store
from tests.dbutil import db_url, store  # noqa: F401


def _row(serial: str | None = None) -> dict[str, object]:
    return {"serial": serial or secrets.token_hex(15), "issued_at": datetime.now(UTC),
            "imprint_sha256": "ab" * 32, "hash_algorithm": "sha256",
            "policy_oid": "0.4.0.2023.1.1"}


def _count(store: Store) -> int:  # noqa: F811
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(TsaSerial)) or 0


def test_concurrent_rows_share_commits_and_are_all_durable(store: Store) -> None:  # noqa: F811
    register = TsaSerialRegister(store)
    threads, each = 12, 10
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(each):
            try:
                register.record(_row())
            except BaseException as exc:
                errors.append(exc)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    assert register.rows == threads * each == _count(store)
    assert register.batches < register.rows  # some commits carried several tokens


def test_duplicate_in_a_batch_fails_alone(store: Store) -> None:  # noqa: F811
    register = TsaSerialRegister(store)
    register.record(_row("abc"))
    with pytest.raises(Conflict):
        register.record(_row("abc"))
    # A batch holding a duplicate falls back to row by row: the others land.
    pending = [_row() for _ in range(3)] + [_row("abc")]
    register._cond.acquire()  # hold the queue so all four form one batch
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        try:
            results[i] = register.record(pending[i])
        except Conflict as exc:
            results[i] = exc

    register._leading = True  # as if a commit were in progress
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in pool:
        t.start()
    register._cond.release()
    while True:
        with register._cond:
            if len(register._queue) == 4:
                register._leading = False
                register._cond.notify_all()
                break
    for t in pool:
        t.join()
    assert isinstance(results[3], Conflict)
    assert [results[i] for i in range(3)] == [4, 4, 4]  # one batch of four
    assert _count(store) == 4
