"""The database, not only the code, keeps the registry unique and the audit chain linear.

Races are real: threads hit the live HTTP server at once (each request its own connection),
and audit writers run in separate processes with their own engines, as nodes of a cluster do.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import Counter
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from ca import audit, registry
from ca.errors import DuplicateEntry
from ca.models import Organization
from ca.store import Store, upgrade
from kakuin.cli import main
from tests.cafixtures import Env, _call
from tests.dbutil import database

RACERS = 8


def _race(env: Env, bodies: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    barrier = threading.Barrier(len(bodies))
    results: list[tuple[int, Any]] = [(0, None)] * len(bodies)

    def post(i: int) -> None:
        barrier.wait()
        results[i] = _call(env.url, "POST", "/api/v1/organizations", env.operator, bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _outcome(results: list[tuple[int, Any]]) -> Counter[int]:
    """201s and refusals; a name clash seen by the code (ca/names.py) is its 422 rule
    "unique", one that raced past it is the database's 409: both count as refused here."""
    for status, body in results:
        if status == 422:
            assert body.get("rule") == "unique", body
        elif status != 201:
            assert body["type"] == "urn:kakuin:problem:ca/conflict", body
    return Counter(201 if status == 201 else 409 for status, _ in results)


def test_concurrent_add_board_for_one_code_gives_one_201(env: Env) -> None:
    # Distinct names (and no corporate number): only the code can clash.
    results = _race(env, [{"kind": "board", "name_ja": f"横浜市教育委員会{i}",
                           "local_gov_code": "141003"} for i in range(RACERS)])
    assert _outcome(results) == {201: 1, 409: RACERS - 1}, results
    with env.store.session() as s:
        n = s.scalar(select(func.count()).select_from(Organization)
                     .where(Organization.local_gov_code == "141003"))
    assert n == 1


def test_concurrent_same_name_under_one_parent_gives_one_201(env: Env) -> None:
    # Distinct codes, one name: only the database sees the clash when requests interleave.
    codes = [f"{p:02d}201" for p in range(20, 20 + RACERS)]
    bodies = [{"kind": "board", "name_ja": "同名教育委員会",
               "local_gov_code": c + str(registry.local_gov_check_digit(c))} for c in codes]
    results = _race(env, bodies)
    assert _outcome(results) == {201: 1, 409: RACERS - 1}, results


def test_unique_violations_become_409_not_500(store: Store) -> None:
    with store.session() as s:
        registry.add_board(s, name_ja="一番教育委員会", local_gov_code="131016", actor="t")
    with pytest.raises(DuplicateEntry) as caught, store.session() as s:
        # Past registry's own check, as a concurrent node's insert would be.
        s.add(Organization(kind="board", name_ja="二番教育委員会", local_gov_code="131016",
                           prefecture="13", status="active"))
    assert caught.value.status == 409
    with store.session() as s:  # a closed board frees its code and its name
        old = s.scalars(select(Organization).where(Organization.local_gov_code == "131016")).one()
        old.status = "closed"
    with store.session() as s:
        registry.add_board(s, name_ja="一番教育委員会", local_gov_code="131016", actor="t")


def _append(url: str, writer: int, count: int) -> None:
    store = Store(url)
    try:
        for i in range(count):
            with store.session() as s:
                audit.record(s, actor=f"node{writer}", action="test.append",
                             object_id=str(i), details={"writer": writer})
    finally:
        store.dispose(close=True)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_audit_chain_stays_linear_with_writers_in_several_processes(
    kind: str, tmp_path: Any
) -> None:
    writers, each = 4, 25
    with database(kind, tmp_path) as url:
        upgrade(url)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_append, args=(url, w, each)) for w in range(writers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        store = Store(url)
        try:
            with store.session() as s:
                result = audit.verify(s)
        finally:
            store.dispose(close=True)
        assert result.ok and result.entries == writers * each, result.problems
        out = CliRunner().invoke(main, ["--home", str(tmp_path), "audit", "verify"],
                                 env={"KAKUIN_DATABASE_URL": url}, catch_exceptions=False)
        assert out.exit_code == 0, out.output
