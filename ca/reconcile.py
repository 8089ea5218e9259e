"""Crash recovery: finish or fail what a dead worker left half-done, and audit it.

Runs when the server starts (``create_app``) and in every scheduler round. Only rows older
than a grace period are touched, so a live worker in the middle of the same operation is
never raced (gunicorn kills a request after 60 s; the default grace is 300 s). Each decision
is a conditional update (``WHERE status = <what we saw>``), and the issuer re-checks the row
before each step (``issuer._still``), so a worker that stalled past the grace period cannot
undo the reconciler's decision either.

What a crash can leave, by the issuer's order (reserve serial -> lint -> store TBS + audit
``certificate.signing`` -> sign in the HSM -> store DER + audit ``certificate.issued``) and
the RA's (request ``approved`` -> issue -> request ``issued``), and what happens to it:

========================================  ===================================================
left behind                               decision
========================================  ===================================================
certificate ``reserved`` (no TBS)         **failed**: nothing was signed.
certificate ``linted`` (TBS, no DER)      **failed**: the HSM may have signed, but the
                                          signature lived only in the dead process's memory
                                          and was never returned to anybody, so no one holds
                                          that certificate. We do not re-sign the stored TBS:
                                          if a signature *did* leak somehow, a second one
                                          would make the "issued once" promise unknowable;
                                          failing is always safe. The serial stays reserved
                                          (never reused; OCSP answers ``unknown``), and a
                                          hosted key that was to be certified is destroyed,
                                          so even a leaked signature certifies an unusable key.
request ``approved``, certificate issued  **completed**: the request becomes ``issued`` (the
                                          certificate exists and was audited).
request ``approved``, no certificate      **failed**, with the reason; the organization submits
                                          a new request (a decision is not replayed without
                                          the decider).
revoked/held, CRL or OCSP not re-signed   nothing to do here: the OCSP hot path re-signs a
                                          response that no longer matches the row, and the
                                          scheduler's ``crl.publish_due`` publishes a CRL that
                                          lacks a change.
seal signed, audit entry not written      nothing exists to reconcile: the sealed document
                                          was never returned (the worker died first).
========================================  ===================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from ca import audit
from ca.models import Certificate, SealRequest, serial_hex
from ca.store import Store
from hsm.api import KeyManager
from hsm.errors import HsmError, HsmKeyNotFound

log = logging.getLogger("kakuin.reconcile")
ACTOR = "reconciler"
DEFAULT_GRACE = timedelta(seconds=300)
_ISSUED = ("issued", "revoked", "hold")


@dataclass
class Outcome:
    certificates_failed: list[str] = field(default_factory=list)
    requests_completed: list[str] = field(default_factory=list)
    requests_failed: list[str] = field(default_factory=list)
    keys_destroyed: int = 0

    def __bool__(self) -> bool:
        return bool(self.certificates_failed or self.requests_completed
                    or self.requests_failed)

    def as_dict(self) -> dict[str, Any]:
        return {"certificates_failed": self.certificates_failed,
                "requests_completed": self.requests_completed,
                "requests_failed": self.requests_failed, "keys_destroyed": self.keys_destroyed}


def reconcile(store: Store, keys: KeyManager | None, *, grace: timedelta = DEFAULT_GRACE,
              now: datetime | None = None) -> Outcome:
    """One pass over abandoned issuances and approvals (see the module doc)."""
    cutoff = (now or datetime.now(UTC)) - grace
    out = Outcome()
    doomed_keys: set[str] = set()
    with store.session() as s:
        stale = s.execute(
            select(Certificate.id, Certificate.serial, Certificate.status,
                   Certificate.hsm_key_id)
            .where(Certificate.status.in_(("reserved", "linted")), Certificate.der.is_(None),
                   Certificate.updated_at < cutoff)
        ).all()
    for row in stale:
        if _fail_certificate(store, row.id, row.status):
            out.certificates_failed.append(row.serial)
            if row.hsm_key_id:
                doomed_keys.add(row.hsm_key_id)
    with store.session() as s:
        approved = s.scalars(
            select(SealRequest.id)
            .where(SealRequest.status == "approved",
                   or_(SealRequest.decided_at.is_(None), SealRequest.decided_at < cutoff))
        ).all()
    for request_id in approved:
        result = _settle_request(store, request_id, cutoff)
        if result == "completed":
            out.requests_completed.append(request_id)
        elif result is not None:
            out.requests_failed.append(request_id)
            if result:
                doomed_keys.add(result)
    if keys is not None:
        for key_id in sorted(doomed_keys):
            out.keys_destroyed += _destroy_unused_key(store, keys, key_id)
    if out:
        log.warning("reconciled abandoned work", extra=out.as_dict())
    return out


def _fail_certificate(store: Store, row_id: int, seen: str) -> bool:
    with store.session() as s:
        done = _rowcount(s.execute(
            update(Certificate)
            .where(Certificate.id == row_id, Certificate.status == seen,
                   Certificate.der.is_(None))
            .values(status="failed")
        ))
        if not done:
            return False  # a live worker moved it on meanwhile
        row = s.get(Certificate, row_id)
        assert row is not None
        audit.record(
            s, actor=ACTOR, action="certificate.abandoned",
            organization_id=row.organization_id, object_type="certificate",
            object_id=f"{row.issuer_name}/{row.serial}",
            details={"was": seen, "seal_request": row.seal_request_id,
                     "decision": "not issued: the issuing worker died "
                                 + ("before signing" if seen == "reserved" else
                                    "before storing; any signature died with it")},
        )
    return True


def _settle_request(store: Store, request_id: str, cutoff: datetime) -> str | None:
    """'completed', the hosted key id (or '') of a failed request, or None if left alone."""
    with store.session() as s:
        certs = s.execute(
            select(Certificate.serial, Certificate.status, Certificate.der.is_not(None),
                   Certificate.updated_at)
            .where(Certificate.seal_request_id == request_id)
        ).all()
        issued = [c for c in certs if c[1] in _ISSUED and c[2]]
        if any(c[1] in ("reserved", "linted") for c in certs):
            return None  # still within its grace period: a live worker may be signing
        row = s.get(SealRequest, request_id)
        assert row is not None
        if issued:
            moved = _move(s, request_id, "issued", None)
            if moved:
                audit.record(
                    s, actor=ACTOR, action="seal-request.issued",
                    organization_id=row.organization_id, object_type="seal-request",
                    object_id=request_id,
                    details={"serial": serial_hex(int(issued[0][0], 16)), "reconciled": True},
                )
            return "completed" if moved else None
        reason = ("the approval was interrupted (server stopped) before a certificate was "
                  "issued; no certificate exists: submit a new request")
        if not _move(s, request_id, "failed", reason):
            return None
        audit.record(
            s, actor=ACTOR, action="seal-request.failed",
            organization_id=row.organization_id, object_type="seal-request",
            object_id=request_id,
            details={"error": "abandoned", "reconciled": True,
                     "abandoned_serials": [c[0] for c in certs]},
        )
        return row.hosted_key_id or ""


def _move(s: Session, request_id: str, status: str, reason: str | None) -> bool:
    values: dict[str, Any] = {"status": status}
    if reason is not None:
        values["reason"] = reason
    return bool(_rowcount(s.execute(
        update(SealRequest)
        .where(SealRequest.id == request_id, SealRequest.status == "approved")
        .values(**values)
    )))


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (its result is a CursorResult at run time)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _destroy_unused_key(store: Store, keys: KeyManager, key_id: str) -> int:
    """Destroy a hosted key no valid certificate and no open request uses (1 if destroyed)."""
    with store.session() as s:
        in_use = s.scalar(
            select(Certificate.id).where(Certificate.hsm_key_id == key_id,
                                         Certificate.status.in_(_ISSUED)).limit(1)
        ) or s.scalar(
            select(SealRequest.id).where(SealRequest.hosted_key_id == key_id,
                                         SealRequest.status.in_(("pending", "approved",
                                                                 "issued"))).limit(1)
        )
    if in_use:
        return 0
    try:
        keys.destroy(keys.find(key_id=bytes.fromhex(key_id)))
    except HsmKeyNotFound:
        return 0
    except (HsmError, ValueError) as exc:  # the decision stands; the key is logged for ops
        log.warning("reconcile: could not destroy key %s: %s", key_id, exc)
        return 0
    with store.session() as s:
        audit.record(s, actor=ACTOR, action="key.destroyed", object_type="hsm-key",
                     object_id=key_id, details={"why": "its certificate was never issued"})
    return 1
