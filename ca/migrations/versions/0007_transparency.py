"""Seal events (who sealed what) and the transparency log (leaves, signed tree heads).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "seal_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=True),
        sa.Column("document_sha256", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("commitment", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seal_events")),
        sa.UniqueConstraint("commitment", name=op.f("uq_seal_events_commitment")),
    )
    op.create_index(op.f("ix_seal_events_organization_id"), "seal_events", ["organization_id"])
    op.create_index(op.f("ix_seal_events_document_sha256"), "seal_events", ["document_sha256"])
    op.create_table(
        "transparency_leaves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("lookup", sa.String(length=64), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transparency_leaves")),
        sa.UniqueConstraint("seq", name=op.f("uq_transparency_leaves_seq")),
    )
    op.create_index(op.f("ix_transparency_leaves_lookup"), "transparency_leaves", ["lookup"])
    op.create_index(op.f("ix_transparency_leaves_organization_id"), "transparency_leaves",
                    ["organization_id"])
    op.create_table(
        "transparency_heads",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp_token", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_transparency_heads")),
    )


def downgrade() -> None:
    op.drop_table("transparency_heads")
    op.drop_index(op.f("ix_transparency_leaves_organization_id"), table_name="transparency_leaves")
    op.drop_index(op.f("ix_transparency_leaves_lookup"), table_name="transparency_leaves")
    op.drop_table("transparency_leaves")
    op.drop_index(op.f("ix_seal_events_document_sha256"), table_name="seal_events")
    op.drop_index(op.f("ix_seal_events_organization_id"), table_name="seal_events")
    op.drop_table("seal_events")
