from __future__ import annotations

import hashlib
import itertools
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from ca import audit
from ca.errors import AuditChainBroken
from ca.models import AuditEntry, AuditHead, Organization
from ca.store import Store


def _append(store: Store, n: int, actor: str = "operator:alice") -> None:
    for i in range(n):
        with store.session() as session:
            audit.record(
                session,
                actor=actor,
                action="certificate.issue",
                organization_id=7,
                object_type="certificate",
                object_id=f"kakuin-issuing-ca/{i:x}",
                digest="ab" * 32,
                request_id=f"req-{i}",
                details={"profile": "eseal", "i": i},
            )


def _verify(store: Store) -> audit.VerifyResult:
    with store.session() as session:
        return audit.verify(session)


def _sql(store: Store, *statements: str) -> None:
    with store.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def test_empty_log_verifies(store: Store) -> None:
    assert _verify(store) == audit.VerifyResult(ok=True, entries=0, problems=[])


def test_chain_of_entries_verifies(store: Store) -> None:
    _append(store, 25)
    result = _verify(store)
    assert result == audit.VerifyResult(ok=True, entries=25, problems=[])
    result.raise_if_broken()

    with store.session() as session:
        rows = audit.entries(session, limit=1000)
        head = session.get_one(AuditHead, 1)
    assert [e.seq for e in rows] == list(range(1, 26))
    assert rows[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.entry_hash for a, b in itertools.pairwise(rows))
    assert (head.last_seq, head.last_hash) == (25, rows[-1].entry_hash)
    assert rows[3].at.tzinfo is UTC
    assert rows[3].details == '{"i":3,"profile":"eseal"}'


def test_several_entries_in_one_transaction(store: Store) -> None:
    with store.session() as session:
        seqs = [audit.record(session, actor="a", action=f"step.{i}").seq for i in range(3)]
    assert seqs == [1, 2, 3]
    _append(store, 1)
    assert _verify(store) == audit.VerifyResult(ok=True, entries=4, problems=[])


def test_entries_pages_in_seq_order(store: Store) -> None:
    _append(store, 5)
    with store.session() as session:
        assert [e.seq for e in audit.entries(session, since_seq=2, limit=2)] == [3, 4]
        assert audit.entries(session, since_seq=5) == []
        with pytest.raises(ValueError, match="limit"):
            audit.entries(session, limit=0)


def test_entry_hash_is_sha256_of_canonical_json(store: Store) -> None:
    """Pins the encoding: external verifiers depend on it, so a change here is a format change."""
    at = datetime(2026, 4, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=9)))
    with store.session() as session:
        entry = audit.record(
            session,
            actor="board:杉並区教育委員会",
            action="seal_request.approve",
            organization_id=3,
            object_type="seal_request",
            object_id="0b6c",
            details={"b": 1, "a": "承認"},
            at=at,
        )
    canonical = (
        '{"action":"seal_request.approve","actor":"board:杉並区教育委員会",'
        '"at":"2026-04-01T03:00:00.000005Z","details":{"a":"承認","b":1},"digest":null,'
        '"object_id":"0b6c","object_type":"seal_request","organization_id":3,'
        f'"prev_hash":"{"0" * 64}","request_id":null,"seq":1}}'
    )
    assert entry.entry_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert _verify(store).ok  # and the database round trip keeps every bit of it


def test_edited_entry_is_detected(store: Store) -> None:
    _append(store, 6)
    _sql(store, "UPDATE audit_entries SET actor = 'operator:mallory' WHERE seq = 3")
    result = _verify(store)
    assert not result.ok
    assert result.entries == 6
    assert result.problems == ["seq 3: entry_hash mismatch (entry altered)"]
    with pytest.raises(AuditChainBroken) as excinfo:
        result.raise_if_broken()
    assert excinfo.value.status == 500


def test_edited_details_are_detected(store: Store) -> None:
    _append(store, 3)
    edit = text("UPDATE audit_entries SET details = :details WHERE seq = 2")
    with store.engine.begin() as connection:
        connection.execute(edit, {"details": '{"i":99,"profile":"eseal"}'})
    assert _verify(store).problems == ["seq 2: entry_hash mismatch (entry altered)"]
    with store.engine.begin() as connection:
        connection.execute(edit, {"details": "not json"})
    assert _verify(store).problems == ["seq 2: details are not valid JSON (entry altered)"]


def test_rehashed_edit_is_detected_by_the_next_link(store: Store) -> None:
    """An editor who also recomputes the entry's hash still breaks the following entry."""
    _append(store, 4)
    with store.session() as session:
        entry = session.get_one(AuditEntry, 2)
        entry.actor = "operator:mallory"
        entry.entry_hash = audit.entry_hash(entry)
    assert _verify(store).problems == ["seq 3: prev_hash does not match the entry before it"]


def test_deleted_middle_entry_is_detected(store: Store) -> None:
    _append(store, 6)
    _sql(store, "DELETE FROM audit_entries WHERE seq = 4")
    result = _verify(store)
    assert not result.ok
    assert result.entries == 5
    assert result.problems == [
        "seq 4 missing (entries deleted)",
        "seq 5: prev_hash does not match the entry before it",
    ]


def test_deleted_range_is_reported_once(store: Store) -> None:
    _append(store, 8)
    _sql(store, "DELETE FROM audit_entries WHERE seq BETWEEN 3 AND 5")
    assert _verify(store).problems == [
        "seq 3 to 5 missing (entries deleted)",
        "seq 6: prev_hash does not match the entry before it",
    ]


def test_deleted_first_entry_is_detected(store: Store) -> None:
    _append(store, 3)
    _sql(store, "DELETE FROM audit_entries WHERE seq = 1")
    assert _verify(store).problems == [
        "seq 1 missing (entries deleted)",
        "seq 2: prev_hash does not match the entry before it",
    ]


def test_swapped_entries_are_detected(store: Store) -> None:
    _append(store, 6)
    _sql(
        store,
        "UPDATE audit_entries SET seq = -1 WHERE seq = 2",
        "UPDATE audit_entries SET seq = 2 WHERE seq = 4",
        "UPDATE audit_entries SET seq = 4 WHERE seq = -1",
    )
    result = _verify(store)
    assert not result.ok
    assert result.entries == 6
    assert "seq 2: entry_hash mismatch (entry altered)" in result.problems
    assert "seq 4: entry_hash mismatch (entry altered)" in result.problems
    assert "seq 2: prev_hash does not match the entry before it" in result.problems


def test_deleted_last_entry_is_detected_by_the_head(store: Store) -> None:
    _append(store, 5)
    _sql(store, "DELETE FROM audit_entries WHERE seq = 5")
    result = _verify(store)
    assert not result.ok
    assert result.entries == 4
    assert len(result.problems) == 1
    assert result.problems[0].startswith("head names seq 5 but the chain ends at seq 4")


def test_altered_head_is_detected(store: Store) -> None:
    _append(store, 2)
    # Flip the first hex digit (a constant replacement would be a no-op 1 time in 16).
    _sql(
        store,
        "UPDATE audit_head SET last_hash = "
        "CASE WHEN substr(last_hash, 1, 1) = '0' THEN '1' ELSE '0' END || substr(last_hash, 2)",
    )
    assert _verify(store).problems[0].startswith("head names seq 2")


def test_missing_head_is_detected_and_blocks_appends(store: Store) -> None:
    _append(store, 1)
    _sql(store, "DELETE FROM audit_head")
    assert _verify(store).problems == ["audit head row is missing"]
    with pytest.raises(AuditChainBroken), store.session() as session:
        audit.record(session, actor="a", action="b")


def test_problems_are_capped(store: Store) -> None:
    _append(store, audit.MAX_PROBLEMS + 5)
    _sql(store, "UPDATE audit_entries SET actor = 'operator:mallory'")
    result = _verify(store)
    assert len(result.problems) == audit.MAX_PROBLEMS + 1
    assert result.problems[-1] == "more problems not listed"


def test_entry_rolls_back_with_the_business_change(store: Store) -> None:
    _append(store, 2)
    with pytest.raises(RuntimeError), store.session() as session:
        org = Organization(kind="school", name_ja="北小学校")
        session.add(org)
        session.flush()
        audit.record(session, actor="a", action="organization.create", organization_id=org.id)
        raise RuntimeError("crash before commit")
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Organization)) == 0
        assert session.get_one(AuditHead, 1).last_seq == 2
        entry = audit.record(session, actor="a", action="again")
    assert entry.seq == 3
    assert _verify(store).ok


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"details": {"pdf": "x" * 5000}}, ValueError, "4096 bytes"),
        ({"details": {"nan": float("nan")}}, ValueError, "JSON"),
        ({"details": {"when": datetime.now(UTC)}}, TypeError, "JSON serializable"),
        ({"details": ["not", "a", "dict"]}, TypeError, "dict"),
        ({"actor": "x" * 129}, ValueError, "actor"),
        ({"action": ""}, ValueError, "action"),
        ({"at": datetime(2026, 1, 1)}, ValueError, "timezone"),
    ],
)
def test_bad_entries_are_refused_before_touching_the_chain(
    store: Store, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {"actor": "operator:alice", "action": "x"}
    args.update(kwargs)
    with pytest.raises(error, match=match), store.session() as session:
        audit.record(session, **args)  # type: ignore[arg-type]
    with store.session() as session:
        assert session.get_one(AuditHead, 1).last_seq == 0


def test_concurrent_appends_make_one_contiguous_chain(store: Store) -> None:
    threads, per_thread = 8, 25
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                with store.session() as session:
                    # A business write first, as real callers do, then the audit entry.
                    session.add(Organization(kind="school", name_ja=f"学校 {t}-{i}"))
                    session.flush()
                    audit.record(session, actor=f"thread:{t}", action="test.append")
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    assert errors == []
    total = threads * per_thread
    assert _verify(store) == audit.VerifyResult(ok=True, entries=total, problems=[])
    with store.session() as session:
        seqs = list(session.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)))
        ats = list(session.scalars(select(AuditEntry.at).order_by(AuditEntry.seq)))
    assert seqs == list(range(1, total + 1))
    assert ats == sorted(ats)  # time is taken under the lock
