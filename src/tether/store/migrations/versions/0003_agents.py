"""Agent identity: agents and their keys, replay records, trusted issuers.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(400), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("trust_domain", sa.String(255), nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("disabled_at_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "agent_keys",
        sa.Column("agent_id", sa.String(400), sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("kid", sa.String(128), primary_key=True),
        sa.Column("jwk", sa.Text, nullable=False),
        sa.Column("added_at_us", sa.BigInteger, nullable=False),
        sa.Column("removed_at_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "jti_replay",
        sa.Column("key", sa.LargeBinary, primary_key=True),
        sa.Column("expires_at_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_jti_replay_expires", "jti_replay", ["expires_at_us"])
    op.create_table(
        "trusted_issuers",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(256), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("trusted_issuers")
    op.drop_index("ix_jti_replay_expires", table_name="jti_replay")
    op.drop_table("jti_replay")
    op.drop_table("agent_keys")
    op.drop_table("agents")
