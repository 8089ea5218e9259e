"""Append-only, hash-chained audit log.

Every entry carries the SHA-256 of the entry before it, so editing, deleting or reordering
entries breaks the chain and ``verify`` says where. ``audit_head`` (one row) names the last
entry, which catches a deleted tail and serialises appenders: ``record`` first increments the
head in an ``UPDATE``, which takes SQLite's write lock or PostgreSQL's row lock before anything
is read, so concurrent appenders queue up instead of forking the chain.

``record`` writes inside the caller's session: the business change and its audit entry
commit together or not at all. On PostgreSQL at REPEATABLE READ or SERIALIZABLE a concurrent
append makes the transaction fail with a serialization error; retry it (the default, READ
COMMITTED, just waits). SQLite needs 3.35 or newer (``UPDATE ... RETURNING``).

What goes in: who (actor, organization), what (action, object, digest), when, and a small
JSON ``details``. What never goes in: document content or personal data, which is why
``details`` is limited to 4 KiB; record a digest of the content instead.

Limit: whoever can rewrite the whole table *and* the head can forge a consistent chain. The
log proves integrity against partial tampering and mistakes, not against a database
administrator by itself; the head goes into every signed transparency tree head
(``ca.transparency``), so whoever kept an earlier published head catches a rewrite.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ca.errors import AuditChainBroken
from ca.models import GENESIS_HASH, AuditEntry, AuditHead, utcnow

MAX_DETAILS_BYTES = 4096
MAX_PROBLEMS = 100
_MAX_LEN = {
    "actor": 128,
    "action": 64,
    "object_type": 32,
    "object_id": 128,
    "digest": 128,
    "request_id": 64,
}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    entries: int
    problems: list[str]

    def raise_if_broken(self) -> None:
        if not self.ok:
            raise AuditChainBroken(f"audit chain broken: {'; '.join(self.problems[:3])}")


def _canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(entry: AuditEntry) -> str:
    """SHA-256 (hex) of the entry's canonical JSON; ``details`` is hashed as parsed JSON.

    Raises ``ValueError`` if the stored ``details`` is not JSON.
    """
    fields = {
        "seq": entry.seq,
        "at": _iso(entry.at),
        "actor": entry.actor,
        "organization_id": entry.organization_id,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "digest": entry.digest,
        "request_id": entry.request_id,
        "details": None if entry.details is None else json.loads(entry.details),
        "prev_hash": entry.prev_hash,
    }
    return hashlib.sha256(_canonical_json(fields).encode("utf-8")).hexdigest()


def _details_text(details: dict[str, Any] | None) -> str | None:
    if details is None:
        return None
    if not isinstance(details, dict):
        raise TypeError("audit details must be a dict")
    text = _canonical_json(details)  # TypeError/ValueError for non-JSON values, NaN
    if len(text.encode("utf-8")) > MAX_DETAILS_BYTES:
        raise ValueError(
            f"audit details over {MAX_DETAILS_BYTES} bytes: record a digest, not content"
        )
    return text


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    organization_id: int | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    digest: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append an entry in the caller's transaction and return it (flushed, not committed).

    Holds the audit head locked until the caller's transaction ends, so keep that short.
    """
    strings = {
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "digest": digest,
        "request_id": request_id,
    }
    for name, value in strings.items():
        if value is not None and not 0 < len(value) <= _MAX_LEN[name]:
            raise ValueError(f"audit {name} must be 1 to {_MAX_LEN[name]} characters")
    if at is not None and at.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware")
    details_text = _details_text(details)

    # Lock first: the increment is atomic and blocks other appenders until we commit.
    head = session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(last_seq=AuditHead.last_seq + 1)
        .returning(AuditHead.last_seq, AuditHead.last_hash)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if head is None:
        raise AuditChainBroken("audit head row is missing")
    seq, prev_hash = head

    entry = AuditEntry(
        seq=seq,
        at=(at or utcnow()).astimezone(UTC),  # taken under the lock: time follows seq
        actor=actor,
        organization_id=organization_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        digest=digest,
        request_id=request_id,
        details=details_text,
        prev_hash=prev_hash,
    )
    entry.entry_hash = entry_hash(entry)
    session.add(entry)
    session.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(last_hash=entry.entry_hash)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return entry


def verify(session: Session) -> VerifyResult:
    """Walk the whole chain and report every inconsistency found.

    The head is read first and only entries up to it are checked, so appends committed
    while we walk are not mistaken for tampering.
    """
    problems: list[str] = []

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)
        elif len(problems) == MAX_PROBLEMS:
            problems.append("more problems not listed")

    head = session.execute(
        select(AuditHead.last_seq, AuditHead.last_hash).where(AuditHead.id == 1)
    ).one_or_none()
    if head is None:
        problem("audit head row is missing")
    query = select(AuditEntry).order_by(AuditEntry.seq)
    if head is not None:
        query = query.where(AuditEntry.seq <= head.last_seq)

    count = 0
    expected_seq, prev_hash = 1, GENESIS_HASH
    rows = session.scalars(query.execution_options(yield_per=500, populate_existing=True))
    for entry in rows:
        count += 1
        if entry.seq > expected_seq:
            last = entry.seq - 1
            gap = f"{expected_seq}" if last == expected_seq else f"{expected_seq} to {last}"
            problem(f"seq {gap} missing (entries deleted)")
        elif entry.seq < expected_seq:
            problem(f"seq {entry.seq} out of range")
        if entry.prev_hash != prev_hash:
            problem(f"seq {entry.seq}: prev_hash does not match the entry before it")
        try:
            if entry_hash(entry) != entry.entry_hash:
                problem(f"seq {entry.seq}: entry_hash mismatch (entry altered)")
        except ValueError:
            problem(f"seq {entry.seq}: details are not valid JSON (entry altered)")
        expected_seq, prev_hash = entry.seq + 1, entry.entry_hash

    if head is not None and (head.last_seq, head.last_hash) != (expected_seq - 1, prev_hash):
        problem(
            f"head names seq {head.last_seq} but the chain ends at seq {expected_seq - 1}"
            " or with another hash (entries deleted from the end, or head altered)"
        )
    return VerifyResult(ok=not problems, entries=count, problems=problems)


def entries(session: Session, since_seq: int = 0, limit: int = 100) -> list[AuditEntry]:
    """Entries after ``since_seq`` in chain order, at most ``limit`` (capped at 1000)."""
    if limit < 1:
        raise ValueError("limit must be positive")
    query = (
        select(AuditEntry)
        .where(AuditEntry.seq > since_seq)
        .order_by(AuditEntry.seq)
        .limit(min(limit, 1000))
    )
    return list(session.scalars(query))
