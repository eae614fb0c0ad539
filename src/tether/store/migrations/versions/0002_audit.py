"""Audit log: the event chain and its signed checkpoints.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# INTEGER on SQLite makes seq the rowid; BIGINT elsewhere.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("actor_id", sa.String(256), nullable=False),
        sa.Column("task_id", sa.String(256), nullable=True),
        sa.Column("resource", sa.String(512), nullable=True),
        sa.Column("allowed", sa.Boolean, nullable=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_audit_events_kind", "audit_events", ["kind", "seq"])
    op.create_index("ix_audit_events_task", "audit_events", ["task_id", "seq"])
    op.create_index("ix_audit_events_actor", "audit_events", ["actor_id", "seq"])
    op.create_index("ix_audit_events_resource", "audit_events", ["resource", "seq"])
    op.create_index("ix_audit_events_time", "audit_events", ["time_us"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("head_hash", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.String(128), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    for name in ("time", "resource", "actor", "task", "kind"):
        op.drop_index(f"ix_audit_events_{name}", table_name="audit_events")
    op.drop_table("audit_events")
