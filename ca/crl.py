"""CRLs: built from the certificate table, numbered by the database, signed in the HSM.

One CRL per issuing CA (``<pki>/<ca-name>.crl``, the URL in its certificates' CDP) and one
from the root for the CA certificates it issued. They are built on a schedule (``due`` /
``publish_due``) and after revocations, never per request.

Numbering (RFC 5280 §5.2.3: strictly increasing per issuer, here with several workers and
hosts): ``publish`` works in three steps so that no lock is held while the HSM signs.

1. One short transaction increments ``crl_counters`` (its row lock, or SQLite's write lock,
   queues concurrent publishers) and, still under that lock, reads the revoked certificates
   and takes thisUpdate. A higher number therefore always means a later snapshot: a newer
   CRL never lacks a revocation an older one lists. The audit head is not locked here, so
   issuance and revocation never wait for a CRL (on SQLite every writer waits, though:
   the read takes ~0.7 s per 100,000 entries).
2. Build and sign outside any transaction.
3. A second transaction stores the CRL and its audit entry.

A crash between 1 and 3 leaves a gap in the numbers, which RFC 5280 allows (increasing, not
contiguous); numbers never repeat or go backwards.

Entries are DER-encoded here; only the CRL around them comes from ``cryptography``, whose
builder spends ~1 s per 100,000 entries on Python objects and re-encoding (``openssl ca
-gencrl``: ~0.9 s). ``tests/test_crl.py`` checks the result byte for byte against the builder.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ca import audit
from ca.authorities import load_certificate, load_key
from ca.issuer import hash_for, throwaway_key
from ca.models import Certificate, Crl, CrlCounter
from ca.store import Store
from hsm.api import KeyManager
from hsm.der import children, generalized_time, tlv, x509_time

log = logging.getLogger(__name__)

DEFAULT_VALIDITY = timedelta(hours=24)
CHANGE_MARGIN = timedelta(minutes=5)
"""How far before a CRL's thisUpdate ``due`` looks for status changes: a revocation is
stamped before it commits, so one committed just after a snapshot can carry an older time."""
MAX_CHANGES_CHECKED = 1000

CrlSigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_LISTED = ("revoked", "hold")
_FLAGS = {flag.value: flag for flag in x509.ReasonFlags}

_REASON_CODES = {
    x509.ReasonFlags.unspecified: 0,
    x509.ReasonFlags.key_compromise: 1,
    x509.ReasonFlags.ca_compromise: 2,
    x509.ReasonFlags.affiliation_changed: 3,
    x509.ReasonFlags.superseded: 4,
    x509.ReasonFlags.cessation_of_operation: 5,
    x509.ReasonFlags.certificate_hold: 6,
    x509.ReasonFlags.remove_from_crl: 8,
    x509.ReasonFlags.privilege_withdrawn: 9,
    x509.ReasonFlags.aa_compromise: 10,
}


class Revoked(NamedTuple):
    """One CRL entry; ``reason`` None or unspecified: no reason code (RFC 5280 §5.3.1)."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None
    invalidity_date: datetime | None = None


@dataclass(frozen=True)
class CrlAuthority:
    """A CA that publishes a CRL: its name (file and URL name), certificate and HSM key."""

    name: str
    certificate: x509.Certificate
    key: CrlSigningKey


# --- DER --------------------------------------------------------------------------------------


_OID_REASON = b"\x06\x03\x55\x1d\x15"  # id-ce-cRLReasons 2.5.29.21
_OID_INVALIDITY = b"\x06\x03\x55\x1d\x18"  # id-ce-invalidityDate 2.5.29.24
_REASON_EXT = {
    flag: tlv(0x30, _OID_REASON + tlv(0x04, bytes((0x0A, 1, code))))
    for flag, code in _REASON_CODES.items()
}
_UNSPECIFIED = (None, x509.ReasonFlags.unspecified)


def _entry(entry: Revoked) -> bytes:
    """One revokedCertificates element; every part is under 128 octets (short lengths)."""
    serial = entry.serial
    if serial <= 0 or serial.bit_length() > 159:
        raise ValueError(f"serial {serial:x} is not positive or longer than 20 octets")
    raw = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
    body = b"\x02%c%s%s" % (len(raw), raw, x509_time(entry.revoked_at))
    extensions = b"" if entry.reason in _UNSPECIFIED else _REASON_EXT[entry.reason]
    if entry.invalidity_date is not None:
        extensions += b"\x30\x18%s\x04\x11%s" % (
            _OID_INVALIDITY, generalized_time(entry.invalidity_date)
        )
    if extensions:
        body += b"\x30%c%s" % (len(extensions), extensions)
    return b"\x30%c%s" % (len(body), body)


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key: CrlSigningKey,
    *,
    number: int,
    this_update: datetime,
    next_update: datetime,
    entries: Sequence[Revoked],
    distribution_point: str | None = None,
) -> bytes:
    """A signed CRL (DER) with one HSM signature, checked against the CA certificate's key.

    ``cryptography`` builds the frame (issuer, times, CRLNumber, AKI from the CA's SKI),
    signed by a throwaway key of the same type so the AlgorithmIdentifier is the same; the
    entries go in and ``issuer_key`` signs the TBS. ``distribution_point`` adds a critical
    IssuingDistributionPoint, which a partitioned CRL must carry (RFC 5280 §5.2.5).
    """
    if this_update.utcoffset() is None or next_update.utcoffset() is None:
        raise ValueError("CRL times must be timezone-aware")
    if next_update <= this_update:
        raise ValueError("nextUpdate must be after thisUpdate")
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update.astimezone(UTC).replace(microsecond=0))
        .next_update(next_update.astimezone(UTC).replace(microsecond=0))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
    )
    if distribution_point is not None:
        idp = x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(distribution_point)],
            relative_name=None,
            only_contains_user_certs=False,
            only_contains_ca_certs=False,
            only_some_reasons=None,
            indirect_crl=False,
            only_contains_attribute_certs=False,
        )
        builder = builder.add_extension(idp, critical=True)
    algorithm = hash_for(issuer_key)
    frame = builder.sign(throwaway_key(issuer_key), algorithm)
    # TBSCertList without entries: version, signature, issuer, thisUpdate, nextUpdate, [0].
    fields = children(frame.tbs_certlist_bytes)
    if len(fields) != 6 or fields[5][0] != 0xA0:
        raise RuntimeError("unexpected TBSCertList layout from cryptography")
    revoked = tlv(0x30, b"".join(map(_entry, entries))) if entries else b""
    tbs = tlv(0x30, b"".join(fields[:5]) + revoked + fields[5])

    # Verified before anything is published: a faulty HSM or the wrong certificate raises.
    public = issuer_cert.public_key()
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey) and isinstance(
        public, ec.EllipticCurvePublicKey
    ):
        signature = issuer_key.sign(tbs, ec.ECDSA(algorithm))
        public.verify(signature, tbs, ec.ECDSA(algorithm))
    elif isinstance(issuer_key, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey):
        # PKCS#1 v1.5, as cryptography's CRL builder signs with RSA.
        signature = issuer_key.sign(tbs, padding.PKCS1v15(), algorithm)
        public.verify(signature, tbs, padding.PKCS1v15(), algorithm)
    else:
        raise ValueError("issuer_key does not belong to issuer_cert")
    signature_algorithm = children(frame.public_bytes(serialization.Encoding.DER))[1]
    return tlv(0x30, tbs + signature_algorithm + tlv(0x03, b"\x00" + signature))


# --- Database ---------------------------------------------------------------------------------


def _listed(issuer_name: str, keep_from: datetime, shard: int | None) -> list[ColumnElement[bool]]:
    """Rows that belong on the CRL: revoked or held, and not expired before ``keep_from``.

    RFC 5280 §3.3: an entry stays until it has appeared on one CRL issued after the
    certificate expired, so publishers keep entries for one validity period past notAfter.
    """
    where = [
        Certificate.issuer_name == issuer_name,
        Certificate.status.in_(_LISTED),
        Certificate.not_after >= keep_from,
        Certificate.kind != "root",  # a self-signed root is never on its own CRL
    ]
    if shard is not None:
        where.append(Certificate.shard == shard)
    return where


def _reason(status: str, value: str | None, serial: str) -> x509.ReasonFlags | None:
    """The reason code to publish; an unusable stored reason is published as unspecified
    (the certificate stays revoked: failing the whole CRL would hide every revocation)."""
    if status == "hold":
        return x509.ReasonFlags.certificate_hold
    if value is None:
        return None
    flag = _FLAGS.get(value)
    if flag is None:
        log.warning("certificate %s: unknown revocation reason %r, listed as unspecified",
                    serial, value)
    # removeFromCRL only means something in a delta CRL (§5.3.1); unspecified is omitted.
    if flag is x509.ReasonFlags.unspecified or flag is x509.ReasonFlags.remove_from_crl:
        return None
    return flag


def _next_number(session: Session, scope: str) -> int:
    """Increment the scope's counter, creating it (race-safe) on first use; returns the number.

    A missing counter starts after the highest stored CRL number, so losing the row can
    never make numbers repeat.
    """
    bump = (
        update(CrlCounter)
        .where(CrlCounter.issuer_name == scope)
        .values(last_number=CrlCounter.last_number + 1)
        .returning(CrlCounter.last_number)
        .execution_options(synchronize_session=False)
    )
    number = session.execute(bump).scalar_one_or_none()
    if number is not None:
        return number
    dialect = session.get_bind().dialect.name
    if dialect not in ("sqlite", "postgresql"):
        raise RuntimeError(f"CRL numbering not implemented for {dialect}")
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    start = select(func.coalesce(func.max(Crl.number), 0)).where(Crl.issuer_name == scope)
    session.execute(
        insert(CrlCounter)
        .values(issuer_name=scope, last_number=start.scalar_subquery())
        .on_conflict_do_nothing(index_elements=["issuer_name"])
    )
    return session.execute(bump).scalar_one()


def publish(
    store: Store,
    *,
    issuer_name: str,
    issuer_cert: x509.Certificate,
    issuer_key: CrlSigningKey,
    validity: timedelta = DEFAULT_VALIDITY,
    now: datetime | None = None,
    actor: str = "crl-publisher",
    shard: int | None = None,
    distribution_point: str | None = None,
) -> Crl:
    """Number, build, sign (HSM) and store the next CRL of ``issuer_name``, audited.

    With ``shard``, a partitioned CRL of that shard's certificates, stored and numbered as
    ``<issuer_name>.<shard>``; it needs ``distribution_point`` (the URL in those
    certificates' CDP) so a relying party can't take it for the complete CRL.
    """
    if validity <= timedelta(0):
        raise ValueError("CRL validity must be positive")
    if now is not None and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    scope = issuer_name
    if shard is not None:
        if distribution_point is None:
            raise ValueError("a partitioned CRL needs its distribution_point")
        scope = f"{issuer_name}.{shard}"
    if not _NAME.match(scope):
        raise ValueError(f"unusable CRL name {scope!r}")

    with store.session() as s:  # step 1: the counter lock is held until this commits
        number = _next_number(s, scope)
        this_update = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        # Core, not ORM rows, one time column (revoked without a time: bad data, but still
        # listed, at its last change), no ORDER BY: 0.4 s less per 100,000 rows on SQLite.
        rows = s.connection().execute(
            select(
                Certificate.serial,
                Certificate.status,
                Certificate.revocation_reason,
                func.coalesce(Certificate.revoked_at, Certificate.updated_at),
                Certificate.invalidity_date,
            ).where(*_listed(issuer_name, this_update - validity, shard))
        ).all()
    entries = [
        Revoked(int(serial, 16), revoked_at, _reason(status, reason, serial), invalidity_date)
        for serial, status, reason, revoked_at, invalidity_date in rows
    ]
    next_update = this_update + validity
    der = build_crl(  # step 2: no transaction open while the HSM signs
        issuer_cert,
        issuer_key,
        number=number,
        this_update=this_update,
        next_update=next_update,
        entries=entries,
        distribution_point=distribution_point,
    )
    digest = hashlib.sha256(der).hexdigest()
    with store.session() as s:  # step 3
        row = Crl(
            issuer_name=scope,
            number=number,
            this_update=this_update,
            next_update=next_update,
            der=der,
        )
        s.add(row)
        audit.record(
            s,
            actor=actor,
            action="crl.published",
            object_type="crl",
            object_id=f"{scope}/{number}",
            digest=digest,
            details={
                "number": number,
                "entries": len(entries),
                "this_update": this_update.isoformat(),
                "next_update": next_update.isoformat(),
            },
        )
    log.info("published CRL %s #%d with %d entries", scope, number, len(entries))
    return row


def latest(store: Store, issuer_name: str) -> Crl | None:
    """The stored CRL with the highest number (the newest snapshot, see the module doc)."""
    with store.session() as s:
        return s.scalars(
            select(Crl).where(Crl.issuer_name == issuer_name).order_by(Crl.number.desc()).limit(1)
        ).first()


def due(store: Store, issuer_name: str, now: datetime, refresh_before: timedelta) -> bool:
    """Whether ``issuer_name`` needs a new CRL.

    Yes when there is none, when the newest expires within ``refresh_before``, or when it no
    longer matches the certificates: a different number of entries (revocation, lifted hold)
    or a certificate revoked or changed since (``CHANGE_MARGIN`` before its thisUpdate) that
    it lists differently. Natural expiry doesn't count: the next refresh drops those entries.
    """
    with store.session() as s:
        head = s.execute(
            select(Crl.id, Crl.this_update, Crl.next_update)
            .where(Crl.issuer_name == issuer_name)
            .order_by(Crl.number.desc())
            .limit(1)
        ).one_or_none()
        if head is None:
            return True
        if head.next_update - now < refresh_before:
            return True
        listed = _listed(issuer_name, head.this_update - (head.next_update - head.this_update),
                         None)
        expected = s.scalar(select(func.count()).select_from(Certificate).where(*listed))
        since = head.this_update - CHANGE_MARGIN
        changed = s.execute(
            select(Certificate.serial, Certificate.status, Certificate.revocation_reason)
            .where(*listed, or_(Certificate.updated_at >= since, Certificate.revoked_at >= since))
            .limit(MAX_CHANGES_CHECKED)
        ).all()
        der = s.scalar(select(Crl.der).where(Crl.id == head.id))
    crl = x509.load_der_x509_crl(der or b"")
    if len(crl) != expected:
        return True
    find: Callable[[int], x509.RevokedCertificate | None]
    find = crl.get_revoked_certificate_by_serial_number  # a linear scan: ~8 ms per 100k
    if len(changed) > 10:
        by_serial = {entry.serial_number: entry for entry in crl}  # ~0.1 s per 100k
        find = by_serial.get
    for serial, status, reason in changed:
        entry = find(int(serial, 16))
        if entry is None:
            return True
        try:
            listed_reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            listed_reason = None
        if listed_reason != _reason(status, reason, serial):
            return True
    return False


def load_authorities(
    store: Store, keys: KeyManager, *, root_name: str, issuing_name: str
) -> list[CrlAuthority]:
    """The issuing CA and the root (whose CRL lists the CA certificates it issued)."""
    out = []
    for kind, name in (("issuing", issuing_name), ("root", root_name)):
        row = load_certificate(store, kind)
        cert = x509.load_der_x509_certificate(row.der or b"")
        out.append(CrlAuthority(name, cert, load_key(keys, row)))
    return out


def publish_due(
    store: Store,
    *,
    authorities: Sequence[CrlAuthority],
    validity: timedelta = DEFAULT_VALIDITY,
    refresh_before: timedelta | None = None,
    now: datetime | None = None,
    pki_dir: Path | None = None,
    actor: str = "crl-scheduler",
) -> list[Crl]:
    """For a scheduler: publish each authority's CRL that is ``due``; returns those published.

    ``refresh_before`` defaults to half the validity, so a CRL is replaced well before its
    nextUpdate. ``now`` is what ``due`` judges by; thisUpdate is still read from the clock
    under the counter lock, so it rises with the CRL number even across workers. With
    ``pki_dir``, each ``<name>.crl`` there is brought up to the newest stored CRL, including
    one another instance published.
    """
    refresh = validity / 2 if refresh_before is None else refresh_before
    at = now or datetime.now(UTC)
    published = []
    for authority in authorities:
        if due(store, authority.name, at, refresh):
            published.append(
                publish(
                    store,
                    issuer_name=authority.name,
                    issuer_cert=authority.certificate,
                    issuer_key=authority.key,
                    validity=validity,
                    actor=actor,
                )
            )
        if pki_dir is not None:
            newest = _newest_number(store, authority.name)
            on_disk = file_number(pki_dir / f"{authority.name}.crl")
            if newest is not None and (on_disk is None or on_disk < newest):
                crl = latest(store, authority.name)
                assert crl is not None
                write_file(pki_dir, authority.name, crl)
    return published


def _newest_number(store: Store, issuer_name: str) -> int | None:
    with store.session() as s:
        return s.scalar(select(func.max(Crl.number)).where(Crl.issuer_name == issuer_name))


# --- Files ------------------------------------------------------------------------------------


def file_number(path: Path) -> int | None:
    """The CRL number of the CRL file at ``path``; None if missing or unreadable."""
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None


def write_file(pki_dir: Path, issuer_name: str, crl: Crl) -> bool:
    """Write ``<pki_dir>/<issuer_name>.crl`` (DER) atomically; False if the file is as new.

    Temp file, fsync, rename: a reader sees the old CRL or the new one, never half of one.
    An exclusive lock plus a number check stop a slower publisher from replacing a newer
    file with an older CRL.
    """
    if not _NAME.match(issuer_name):
        raise ValueError(f"unusable CRL name {issuer_name!r}")
    pki_dir.mkdir(parents=True, exist_ok=True)
    target = pki_dir / f"{issuer_name}.crl"
    with open(pki_dir / f".{issuer_name}.crl.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = file_number(target)
        if current is not None and current >= crl.number:
            return False
        fd, tmp = tempfile.mkstemp(dir=pki_dir, prefix=f".{issuer_name}.crl.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(crl.der)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # published: anyone may read it
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(pki_dir, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power loss
        finally:
            os.close(directory)
    return True
