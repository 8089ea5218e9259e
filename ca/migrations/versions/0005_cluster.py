"""Cluster: database-enforced uniqueness of registry entries, cluster-wide scheduler lease.

Several nodes share one database, so checks in code alone race: the partial unique indexes
below make the database refuse the loser (registry.py turns that into 409). Serials, CRL
numbers and TSA serials were unique from 0001. The upgrade fails if the registry already holds
duplicates among live (active or pending) organizations: resolve them first, the migration
does not guess which one is right.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LIVE = "status IN ('active', 'pending')"
INDEXES = (
    ("uq_organizations_active_board_local_gov_code", ["local_gov_code"],
     "kind = 'board' AND status = 'active'"),
    ("uq_organizations_live_corporate_number", ["corporate_number"],
     f"corporate_number IS NOT NULL AND {_LIVE}"),
    ("uq_organizations_live_name_per_parent", ["parent_id", "name_ja"],
     f"parent_id IS NOT NULL AND {_LIVE}"),
    ("uq_organizations_live_top_level_name", ["name_ja"], f"parent_id IS NULL AND {_LIVE}"),
)


def upgrade() -> None:
    for name, columns, where in INDEXES:
        op.create_index(name, "organizations", columns, unique=True,
                        sqlite_where=sa.text(where), postgresql_where=sa.text(where))
    op.create_table(
        "scheduler_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("period_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_lease")),
    )
    op.create_table(
        "scheduler_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("period_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduler_runs")),
    )
    op.create_index(op.f("ix_scheduler_runs_period_start_ms"), "scheduler_runs",
                    ["period_start_ms"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_scheduler_runs_period_start_ms"), table_name="scheduler_runs")
    op.drop_table("scheduler_runs")
    op.drop_table("scheduler_lease")
    for name, _columns, _where in INDEXES:
        op.drop_index(name, table_name="organizations")
