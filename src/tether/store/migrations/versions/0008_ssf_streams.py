"""Shared Signals (issue 17): receivers' streams and the delivery log (an outbox of SETs).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ssf_streams",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ssf_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("stream_id", sa.String(64), nullable=False),
        sa.Column("event_seq", sa.BigInteger, nullable=True),
        sa.Column("event_type", sa.String(256), nullable=False),
        sa.Column("claims", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at_us", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.String(256), nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_at_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_ssf_deliveries_due", "ssf_deliveries", ["status", "next_attempt_at_us"])
    op.create_index("ix_ssf_deliveries_stream", "ssf_deliveries", ["stream_id", "created_at_us"])


def downgrade() -> None:
    op.drop_index("ix_ssf_deliveries_stream", table_name="ssf_deliveries")
    op.drop_index("ix_ssf_deliveries_due", table_name="ssf_deliveries")
    op.drop_table("ssf_deliveries")
    op.drop_table("ssf_streams")
