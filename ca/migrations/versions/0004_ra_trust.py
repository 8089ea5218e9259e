"""RA trust model: pending schools, seal-request approvals (dual control), imported school list.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUS = "status IN ('active', 'closed', 'merged')"
NEW_STATUS = "status IN ('active', 'pending', 'closed', 'merged')"


def _swap_status(condition: str) -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint in place (the table is rebuilt).
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_organizations_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_organizations_status"), condition)


def upgrade() -> None:
    _swap_status(NEW_STATUS)
    with op.batch_alter_table("seal_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_by_subject", sa.String(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column("approvals_required", sa.Integer(), nullable=False,
                                      server_default="1"))
    op.create_table(
        "seal_request_approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seal_request_id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["api_clients.id"],
                                name=op.f("fk_seal_request_approvals_client_id_api_clients")),
        sa.ForeignKeyConstraint(
            ["seal_request_id"], ["seal_requests.id"],
            name=op.f("fk_seal_request_approvals_seal_request_id_seal_requests")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seal_request_approvals")),
        sa.UniqueConstraint("seal_request_id", "client_id",
                            name=op.f("uq_seal_request_approvals_seal_request_id_client_id")),
    )
    with op.batch_alter_table("seal_request_approvals", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_seal_request_approvals_seal_request_id"),
                              ["seal_request_id"], unique=False)
    op.create_table(
        "listed_schools",
        sa.Column("school_code", sa.String(length=13), nullable=False),
        sa.Column("name_ja", sa.String(length=256), nullable=False),
        sa.Column("school_type", sa.String(length=2), nullable=False),
        sa.Column("founder", sa.String(length=16), nullable=False),
        sa.Column("prefecture", sa.String(length=2), nullable=False),
        sa.Column("local_gov_code", sa.String(length=6), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False, server_default="open"),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("school_code", name=op.f("pk_listed_schools")),
    )


def downgrade() -> None:
    op.drop_table("listed_schools")
    with op.batch_alter_table("seal_request_approvals", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_seal_request_approvals_seal_request_id"))
    op.drop_table("seal_request_approvals")
    with op.batch_alter_table("seal_requests", schema=None) as batch_op:
        batch_op.drop_column("approvals_required")
        batch_op.drop_column("requested_by_subject")
    op.execute("UPDATE organizations SET status = 'closed' WHERE status = 'pending'")
    _swap_status(OLD_STATUS)
