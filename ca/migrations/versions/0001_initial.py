"""Initial schema: registry, requests, certificates, CRL/OCSP/TSA state, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Written from ``alembic revision --autogenerate`` and reviewed. Timestamps are plain
``DateTime`` (naive UTC); ``ca.models.UTCDateTime`` adds the zone in Python, so revisions
never import the models (they must keep meaning what they meant when written).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name_ja", sa.String(length=256), nullable=False),
        sa.Column("name_en", sa.String(length=256), nullable=True),
        sa.Column("school_code", sa.String(length=13), nullable=True),
        sa.Column("local_gov_code", sa.String(length=6), nullable=True),
        sa.Column("corporate_number", sa.String(length=13), nullable=True),
        sa.Column("prefecture", sa.String(length=2), nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="active", nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "kind IN ('board', 'school', 'school_corporation', 'operator')",
            name=op.f("ck_organizations_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('active', 'closed', 'merged')", name=op.f("ck_organizations_status")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["organizations.id"],
            name=op.f("fk_organizations_parent_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organizations")),
        sa.UniqueConstraint("school_code", name=op.f("uq_organizations_school_code")),
    )
    op.create_index(op.f("ix_organizations_parent_id"), "organizations", ["parent_id"])

    op.create_table(
        "organization_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        _ts("at"),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_organization_events_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_organization_events")),
    )
    op.create_index(
        op.f("ix_organization_events_organization_id"), "organization_events", ["organization_id"]
    )

    op.create_table(
        "api_clients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        _ts("created_at"),
        _ts("revoked_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_api_clients_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_clients")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_clients_token_hash")),
    )
    op.create_index(op.f("ix_api_clients_organization_id"), "api_clients", ["organization_id"])

    op.create_table(
        "seal_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("requested_by", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("csr_der", sa.LargeBinary(), nullable=True),
        sa.Column("hosted_key_id", sa.String(length=64), nullable=True),
        sa.Column("key_algorithm", sa.String(length=32), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("replaces_serial", sa.String(length=40), nullable=True),
        sa.Column("decided_by", sa.Integer(), nullable=True),
        _ts("decided_at", nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        _ts("created_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected', 'issued', 'failed')",
            name=op.f("ck_seal_requests_status"),
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["api_clients.id"], name=op.f("fk_seal_requests_decided_by_api_clients")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_seal_requests_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["requested_by"],
            ["api_clients.id"],
            name=op.f("fk_seal_requests_requested_by_api_clients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seal_requests")),
    )
    op.create_index(op.f("ix_seal_requests_organization_id"), "seal_requests", ["organization_id"])
    op.create_index(
        op.f("ix_seal_requests_public_key_sha256"), "seal_requests", ["public_key_sha256"]
    )

    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer_name", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("seal_request_id", sa.String(length=36), nullable=True),
        _ts("not_before"),
        _ts("not_after"),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        _ts("revoked_at", nullable=True),
        _ts("invalidity_date", nullable=True),
        sa.Column("tbs_der", sa.LargeBinary(), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("hsm_key_id", sa.String(length=64), nullable=True),
        sa.Column("shard", sa.Integer(), server_default="0", nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(
            "kind IN ('root', 'issuing', 'ocsp', 'tsa', 'eseal')",
            name=op.f("ck_certificates_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('reserved', 'linted', 'issued', 'revoked', 'hold', 'failed')",
            name=op.f("ck_certificates_status"),
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_certificates_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["seal_request_id"],
            ["seal_requests.id"],
            name=op.f("fk_certificates_seal_request_id_seal_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificates")),
        sa.UniqueConstraint(
            "issuer_name", "serial", name=op.f("uq_certificates_issuer_name_serial")
        ),
    )
    op.create_index(op.f("ix_certificates_organization_id"), "certificates", ["organization_id"])
    op.create_index(
        op.f("ix_certificates_public_key_sha256"), "certificates", ["public_key_sha256"]
    )
    op.create_index(op.f("ix_certificates_status"), "certificates", ["status"])

    op.create_table(
        "crls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer_name", sa.String(length=64), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        _ts("this_update"),
        _ts("next_update"),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crls")),
        sa.UniqueConstraint("issuer_name", "number", name=op.f("uq_crls_issuer_name_number")),
    )
    op.create_table(
        "crl_counters",
        sa.Column("issuer_name", sa.String(length=64), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("issuer_name", name=op.f("pk_crl_counters")),
    )
    op.create_table(
        "ocsp_responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer_name", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        _ts("this_update"),
        _ts("next_update"),
        _ts("produced_at"),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ocsp_responses")),
        sa.UniqueConstraint(
            "issuer_name", "serial", name=op.f("uq_ocsp_responses_issuer_name_serial")
        ),
    )
    op.create_table(
        "tsa_serials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=40), nullable=False),
        _ts("issued_at"),
        sa.Column("imprint_sha256", sa.String(length=128), nullable=False),
        sa.Column("hash_algorithm", sa.String(length=16), nullable=False),
        sa.Column("policy_oid", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tsa_serials")),
        sa.UniqueConstraint("serial", name=op.f("uq_tsa_serials_serial")),
    )

    op.create_table(
        "audit_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        _ts("at"),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=True),
        sa.Column("object_id", sa.String(length=128), nullable=True),
        sa.Column("digest", sa.String(length=128), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_entries")),
    )
    op.create_index(op.f("ix_audit_entries_organization_id"), "audit_entries", ["organization_id"])
    audit_head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # The genesis head: appenders increment it, so the row must exist before the first entry.
    op.bulk_insert(audit_head, [{"id": 1, "last_seq": 0, "last_hash": "0" * 64}])


def downgrade() -> None:
    for table in (
        "audit_head",
        "audit_entries",
        "tsa_serials",
        "ocsp_responses",
        "crl_counters",
        "crls",
        "certificates",
        "seal_requests",
        "api_clients",
        "organization_events",
        "organizations",
    ):
        op.drop_table(table)
