"""Initial schema: meta, secrets, secret versions, operators.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tether_meta",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "secrets",
        sa.Column("path", sa.String(256), primary_key=True),
        sa.Column("sensitivity", sa.Integer, nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),
        sa.Column("destinations", sa.Text, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("rotation_period_seconds", sa.Integer, nullable=True),
        sa.Column("current_version", sa.Integer, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("updated_at_us", sa.BigInteger, nullable=False),
        sa.Column("deleted_at_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "secret_versions",
        sa.Column("path", sa.String(256), sa.ForeignKey("secrets.path"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_index("ix_secret_versions_kek", "secret_versions", ["kek_version"])
    op.create_table(
        "operators",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary, nullable=False, unique=True),
        sa.Column("created_at_us", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("revoked_at_us", sa.BigInteger, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("operators")
    op.drop_index("ix_secret_versions_kek", table_name="secret_versions")
    op.drop_table("secret_versions")
    op.drop_table("secrets")
    op.drop_table("tether_meta")
