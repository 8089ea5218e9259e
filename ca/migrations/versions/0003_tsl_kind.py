"""Certificates of kind "tsl": the trust-list signer (ETSI TS 119 612 id-tsl-kp-tslSigning).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "kind IN ('root', 'issuing', 'ocsp', 'tsa', 'eseal')"
NEW = "kind IN ('root', 'issuing', 'ocsp', 'tsa', 'eseal', 'tsl')"


def _swap(condition: str) -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint in place (the table is rebuilt).
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_certificates_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_certificates_kind"), condition)


def upgrade() -> None:
    _swap(NEW)


def downgrade() -> None:
    _swap(OLD)
