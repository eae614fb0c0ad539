"""Table definitions shared by every SQL backend. Migrations create them; keep in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

meta = Table(
    "tether_meta",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

secrets = Table(
    "secrets",
    metadata,
    Column("path", String(256), primary_key=True),
    Column("sensitivity", Integer, nullable=False),
    Column("purposes", Text, nullable=False),  # JSON array of names
    Column("destinations", Text, nullable=False),  # JSON array of names
    Column("owner", String(128), nullable=False),
    Column("rotation_period_seconds", Integer, nullable=True),
    Column("current_version", Integer, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
    Column("deleted_at_us", BigInteger, nullable=True),
)

secret_versions = Table(
    "secret_versions",
    metadata,
    Column("path", String(256), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("kek_version", Integer, nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    ForeignKeyConstraint(["path"], ["secrets.path"]),
    Index("ix_secret_versions_kek", "kek_version"),
)

operators = Table(
    "operators",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
)
