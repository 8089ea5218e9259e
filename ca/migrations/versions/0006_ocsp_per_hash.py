"""OCSP: one pre-signed response per certificate *and* CertID hash (SHA-256, SHA-1).

A stored response used to carry two SingleResponses (a SHA-256 and a SHA-1 CertID) for one
certificate; clients that read exactly one SingleResponse (cryptography's
``certificate_status``) refused it. Each row now holds one, for one hash. The old rows are
deleted: they are a cache the responder re-signs on the next request (or
``refresh_stale(include_missing=True)``), and their form would be refused anyway.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM ocsp_responses")
    with op.batch_alter_table("ocsp_responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hash_algorithm", sa.String(length=16), nullable=False))
        batch_op.drop_constraint(op.f("uq_ocsp_responses_issuer_name_serial"), type_="unique")
        batch_op.create_unique_constraint(
            op.f("uq_ocsp_responses_issuer_name_serial_hash_algorithm"),
            ["issuer_name", "serial", "hash_algorithm"],
        )


def downgrade() -> None:
    op.execute("DELETE FROM ocsp_responses")
    with op.batch_alter_table("ocsp_responses", schema=None) as batch_op:
        batch_op.drop_constraint(
            op.f("uq_ocsp_responses_issuer_name_serial_hash_algorithm"), type_="unique"
        )
        batch_op.create_unique_constraint(
            op.f("uq_ocsp_responses_issuer_name_serial"), ["issuer_name", "serial"]
        )
        batch_op.drop_column("hash_algorithm")
