"""Database tables of the CA (SQLAlchemy 2).

What is stored: the school registry, API clients, seal requests, certificates, CRLs, pre-signed
OCSP responses, TSA serials and the audit log. What is never stored: private keys (they live
in the HSM; we keep only the hex CKA_ID) and document content (only digests).

Every change here needs a matching Alembic revision in ``ca/migrations/versions``;
``tests/test_store.py`` fails when the two drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ORGANIZATION_KINDS = ("board", "school", "school_corporation", "operator")
ORGANIZATION_STATUSES = ("active", "pending", "closed", "merged")
SEAL_REQUEST_STATUSES = ("pending", "approved", "rejected", "issued", "failed")
CERTIFICATE_KINDS = ("root", "issuing", "ocsp", "tsa", "eseal", "tsl")
CERTIFICATE_STATUSES = ("reserved", "linted", "issued", "revoked", "hold", "failed")
GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first audit entry; the initial migration puts it in ``audit_head``."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def serial_hex(serial: int) -> str:
    """The one text form of a certificate serial we store: lowercase hex, no leading zeros.

    Positive and at most 20 octets in DER (RFC 5280 4.1.2.2), so it fits ``String(40)``.
    """
    if serial <= 0 or serial.bit_length() > 159:
        raise ValueError("certificate serial must be positive and at most 20 octets")
    return format(serial, "x")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every database.

    Stored as naive UTC so SQLite (no time zones) and PostgreSQL behave the same; naive input
    is refused because guessing its zone is how timestamps silently shift by nine hours.
    """

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given; use an aware (UTC) datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime from the database, got {type(value).__name__}")
        return value.replace(tzinfo=UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    # Named constraints: Alembic needs names to alter them later (SQLite batch mode too).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime}


_LIVE = "status IN ('active', 'pending')"
_ACTIVE_BOARD = text("kind = 'board' AND status = 'active'")
_LIVE_CORPORATE = text(f"corporate_number IS NOT NULL AND {_LIVE}")
_LIVE_CHILD = text(f"parent_id IS NOT NULL AND {_LIVE}")
_LIVE_TOP = text(f"parent_id IS NULL AND {_LIVE}")


class Organization(Base):
    """A board of education, school, school corporation or the operator.

    Never deleted: closures, mergers and moves between boards are status changes plus an
    ``OrganizationEvent``, so old certificates and audit entries keep a subject to point at.
    """

    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint(_one_of("kind", ORGANIZATION_KINDS), name="kind"),
        CheckConstraint(_one_of("status", ORGANIZATION_STATUSES), name="status"),
        # The database enforces what registry.py checks, so concurrent registrations on
        # several nodes end in one row and IntegrityError (409) for the others (rev. 0005).
        Index("uq_organizations_active_board_local_gov_code", "local_gov_code", unique=True,
              sqlite_where=_ACTIVE_BOARD, postgresql_where=_ACTIVE_BOARD),
        Index("uq_organizations_live_corporate_number", "corporate_number", unique=True,
              sqlite_where=_LIVE_CORPORATE, postgresql_where=_LIVE_CORPORATE),
        Index("uq_organizations_live_name_per_parent", "parent_id", "name_ja", unique=True,
              sqlite_where=_LIVE_CHILD, postgresql_where=_LIVE_CHILD),
        Index("uq_organizations_live_top_level_name", "name_ja", unique=True,
              sqlite_where=_LIVE_TOP, postgresql_where=_LIVE_TOP),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    name_ja: Mapped[str] = mapped_column(String(256))
    name_en: Mapped[str | None] = mapped_column(String(256))
    school_code: Mapped[str | None] = mapped_column(String(13), unique=True)
    local_gov_code: Mapped[str | None] = mapped_column(String(6))
    corporate_number: Mapped[str | None] = mapped_column(String(13))
    prefecture: Mapped[str | None] = mapped_column(String(2))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OrganizationEvent(Base):
    """History of an organization (moved board, merged, closed); ``detail`` is JSON."""

    __tablename__ = "organization_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiClient(Base):
    """A system calling the API on behalf of one organization; only the token's hash is kept."""

    __tablename__ = "api_clients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class SealRequest(Base):
    """A request for an e-seal certificate, waiting for (or past) the board's decision.

    Either ``csr_der`` (the school keeps the key) or ``hosted_key_id`` (key in our HSM).
    """

    __tablename__ = "seal_requests"
    __table_args__ = (CheckConstraint(_one_of("status", SEAL_REQUEST_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    status: Mapped[str] = mapped_column(String(16))
    profile: Mapped[str] = mapped_column(String(64))
    csr_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    hosted_key_id: Mapped[str | None] = mapped_column(String(64))
    key_algorithm: Mapped[str] = mapped_column(String(32))
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    replaces_serial: Mapped[str | None] = mapped_column(String(40))
    decided_by: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    decided_at: Mapped[datetime | None]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The person behind ``requested_by`` when there is one (an OIDC ``sub``), for dual control.
    requested_by_subject: Mapped[str | None] = mapped_column(String(255))
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class SealRequestApproval(Base):
    """One approval of a seal request; issuance waits for ``approvals_required`` of them.

    Distinct approvers (client and, where known, person) are enforced by ``ca.enrollment``
    and, for clients, by the unique constraint.
    """

    __tablename__ = "seal_request_approvals"
    __table_args__ = (UniqueConstraint("seal_request_id", "client_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seal_request_id: Mapped[str] = mapped_column(ForeignKey("seal_requests.id"), index=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("api_clients.id"))
    subject: Mapped[str | None] = mapped_column(String(255))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ListedSchool(Base):
    """A school of the list the operator imported (``kakuin registry import``), after MEXT's
    学校コード list. A school a board registers is confirmed when it matches a row here."""

    __tablename__ = "listed_schools"

    school_code: Mapped[str] = mapped_column(String(13), primary_key=True)
    name_ja: Mapped[str] = mapped_column(String(256))
    school_type: Mapped[str] = mapped_column(String(2))
    founder: Mapped[str] = mapped_column(String(16))
    prefecture: Mapped[str] = mapped_column(String(2))
    local_gov_code: Mapped[str | None] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class Certificate(Base):
    """Every certificate we sign, from the moment its serial is reserved.

    The issuance order (reserve, lint and keep ``tbs_der``, audit, sign, keep ``der``) means a
    crash leaves a row saying what was intended, never a signed certificate we don't know of.
    ``serial`` is ``serial_hex`` text: the same serial must look the same everywhere.
    """

    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("issuer_name", "serial"),
        CheckConstraint(_one_of("kind", CERTIFICATE_KINDS), name="kind"),
        CheckConstraint(_one_of("status", CERTIFICATE_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_name: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(Text)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    seal_request_id: Mapped[str | None] = mapped_column(ForeignKey("seal_requests.id"))
    not_before: Mapped[datetime]
    not_after: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16), index=True)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[datetime | None]
    invalidity_date: Mapped[datetime | None]
    tbs_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    hsm_key_id: Mapped[str | None] = mapped_column(String(64))
    shard: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Crl(Base):
    """A published CRL.

    RFC 5280 allows CRL numbers up to 20 octets; we allocate them sequentially from 1 per
    issuer (``CrlCounter``), so a 64-bit integer never runs out.
    """

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("issuer_name", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_name: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(BigInteger)
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    der: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CrlCounter(Base):
    """Last CRL number per issuer, locked while allocating so numbers strictly increase."""

    __tablename__ = "crl_counters"

    issuer_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)


class OcspResponse(Base):
    """The current pre-signed OCSP response for one certificate under one CertID hash (each
    holds one SingleResponse: clients such as cryptography refuse more for one CertID)."""

    __tablename__ = "ocsp_responses"
    __table_args__ = (UniqueConstraint("issuer_name", "serial", "hash_algorithm"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    issuer_name: Mapped[str] = mapped_column(String(64))
    serial: Mapped[str] = mapped_column(String(40))
    hash_algorithm: Mapped[str] = mapped_column(String(16))  # the CertID's: sha256, sha1
    this_update: Mapped[datetime]
    next_update: Mapped[datetime]
    produced_at: Mapped[datetime]
    der: Mapped[bytes] = mapped_column(LargeBinary)


class TsaSerial(Base):
    """One issued timestamp: its serial (unique, RFC 3161) and the imprint, never the content."""

    __tablename__ = "tsa_serials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    serial: Mapped[str] = mapped_column(String(40), unique=True)
    issued_at: Mapped[datetime]
    imprint_sha256: Mapped[str] = mapped_column(String(128))
    hash_algorithm: Mapped[str] = mapped_column(String(16))
    policy_oid: Mapped[str] = mapped_column(String(64))


class UsedToken(Base):
    """Single-use tokens (e.g. CSC signature activation data) already spent.

    A unique insert is the consumption, so a token is spent once across all workers and
    instances sharing the database. Rows past ``expires_at`` may be purged.
    """

    __tablename__ = "used_tokens"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    used_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """One link of the hash-chained audit log (see ``ca.audit``).

    ``seq`` is assigned by ``ca.audit.record`` (1, 2, 3, ... without gaps), not by the
    database. ``organization_id`` has no foreign key: the log outlives what it talks about.
    """

    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))
    organization_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str | None] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(128))
    digest: Mapped[str | None] = mapped_column(String(128))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The single row (id 1) naming the last audit entry.

    Appenders lock it first, which serialises them; verification compares it with the last
    entry, which is how a deleted tail shows.
    """

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class SchedulerLease(Base):
    """Who runs a cluster-wide periodic job (``ca.scheduler``) for which period, until when.

    Claimed by a conditional ``UPDATE`` (period newer, previous holder done or expired), so
    of all the workers on all the nodes exactly one wins each period.
    """

    __tablename__ = "scheduler_lease"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    period_start_ms: Mapped[int] = mapped_column(BigInteger)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)


class SchedulerRun(Base):
    """One run of a cluster-wide periodic job: the record "exactly once per period" is
    checked against. Deliberately no unique constraint: the lease must do that job."""

    __tablename__ = "scheduler_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    period_start_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    holder: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    summary: Mapped[str | None] = mapped_column(Text)


class SealEvent(Base):
    """One sealed document (or CSC hash): who, for which organization, when (``ca.transparency``).

    ``actor`` is the school system's pseudonymous staff reference (never in the document);
    ``salt`` and ``commitment`` tie the event to its public transparency-log leaf without
    the log revealing ``document_sha256``. Private: read only through jurisdiction checks.
    """

    __tablename__ = "seal_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    organization_id: Mapped[int] = mapped_column(Integer, index=True)
    client_id: Mapped[int | None] = mapped_column(Integer)
    client: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # pdf, json, csc
    level: Mapped[str | None] = mapped_column(String(16))
    document_sha256: Mapped[str] = mapped_column(String(64), index=True)
    request_id: Mapped[str | None] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(64))
    commitment: Mapped[str] = mapped_column(String(64), unique=True)


class TransparencyLeaf(Base):
    """An entry of the public transparency log (RFC 9162 leaf input = ``body``).

    Queued with ``seq`` NULL in the transaction of the event; the sequencer (under the
    cluster lease) numbers them 0, 1, 2, ... in id order, so commit order never forks trees.
    """

    __tablename__ = "transparency_leaves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # precertificate, certificate, seal
    lookup: Mapped[str] = mapped_column(String(64), index=True)  # commitment / DER SHA-256
    organization_id: Mapped[int | None] = mapped_column(Integer, index=True)
    body: Mapped[str] = mapped_column(Text)
    leaf_hash: Mapped[str] = mapped_column(String(64))


class TransparencyHead(Base):
    """A signed tree head: ``body`` (canonical JSON) as signed, its signature and TSA token."""

    __tablename__ = "transparency_heads"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp_token: Mapped[bytes | None] = mapped_column(LargeBinary)
