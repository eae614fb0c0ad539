"""Approvals bind the exact request: ``request`` (JSON: mode, destination, method, path, or the
delegated scope) and ``request_hash``, which identical requests share.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("request", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("approvals") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("request")
