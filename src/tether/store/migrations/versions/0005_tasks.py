"""Destinations, tasks, grants, approvals and engine leases.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_US = sa.BigInteger


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("base_url", sa.Text, nullable=False),
        sa.Column("secret", sa.String(256), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at_us", _US, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.String(400), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("objective", sa.Text, nullable=False),
        sa.Column("objective_sha256", sa.String(64), nullable=False),
        sa.Column("sensitivity", sa.Integer, nullable=False),
        sa.Column("secrets", sa.Text, nullable=False),
        sa.Column("destinations", sa.Text, nullable=False),
        sa.Column("tools", sa.Text, nullable=False),
        sa.Column("created_at_us", _US, nullable=False),
        sa.Column("expires_at_us", _US, nullable=False),
        sa.Column("ended_at_us", _US, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("parent_id", sa.String(64), nullable=True),
        sa.Column("root_id", sa.String(64), nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("chain", sa.Text, nullable=False),
        sa.Column("context_version", sa.Integer, nullable=False),
        sa.Column("approval_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_tasks_agent", "tasks", ["agent_id", "status"])
    op.create_index("ix_tasks_status_expires", "tasks", ["status", "expires_at_us"])
    op.create_index("ix_tasks_root", "tasks", ["root_id"])
    op.create_index("ix_tasks_parent", "tasks", ["parent_id"])
    op.create_table(
        "grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("agent_id", sa.String(400), nullable=False),
        sa.Column("jkt", sa.String(128), nullable=False),
        sa.Column("secret", sa.String(256), nullable=True),
        sa.Column("destination", sa.String(64), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("created_at_us", _US, nullable=False),
        sa.Column("expires_at_us", _US, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=True),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("revoked_at_us", _US, nullable=True),
        sa.Column("revoke_reason", sa.String(64), nullable=True),
    )
    op.create_index("ix_grants_task", "grants", ["task_id"])
    op.create_index("ix_grants_secret", "grants", ["secret"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("agent_id", sa.String(400), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("resource", sa.String(512), nullable=False),
        sa.Column("context_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("requested_at_us", _US, nullable=False),
        sa.Column("expires_at_us", _US, nullable=False),
        sa.Column("decided_at_us", _US, nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_approvals_task", "approvals", ["task_id", "action", "resource"])
    op.create_index("ix_approvals_status", "approvals", ["status", "requested_at_us"])
    op.create_table(
        "leases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("engine", sa.String(64), nullable=False),
        sa.Column("handle", sa.Text, nullable=False),
        sa.Column("created_at_us", _US, nullable=False),
        sa.Column("expires_at_us", _US, nullable=False),
        sa.Column("revoked_at_us", _US, nullable=True),
        sa.Column("engine_revoked_at_us", _US, nullable=True),
    )
    op.create_index("ix_leases_task", "leases", ["task_id"])
    op.create_index("ix_leases_pending", "leases", ["engine_revoked_at_us", "expires_at_us"])


def downgrade() -> None:
    for table in ("leases", "approvals", "grants", "tasks", "destinations"):
        op.drop_table(table)
