"""Table definitions shared by every SQL backend. Migrations create them; keep in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
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

# Audit: append-only. ``body`` is the event's canonical JSON (what the hash covers); the
# other columns are an index derived from it, for queries. On SQLite the key is INTEGER
# so that it is the rowid (no second b-tree for the primary key).
_SEQ = BigInteger().with_variant(Integer(), "sqlite")

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("time_us", BigInteger, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("actor_id", String(256), nullable=False),
    Column("task_id", String(256), nullable=True),
    Column("resource", String(512), nullable=True),
    Column("allowed", Boolean, nullable=True),
    Column("body", Text, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    # (column, seq): filtered queries page by seq without sorting.
    Index("ix_audit_events_kind", "kind", "seq"),
    Index("ix_audit_events_task", "task_id", "seq"),
    Index("ix_audit_events_actor", "actor_id", "seq"),
    Index("ix_audit_events_resource", "resource", "seq"),
    Index("ix_audit_events_time", "time_us"),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=False),
    Column("time_us", BigInteger, nullable=False),
    Column("head_hash", LargeBinary, nullable=False),
    Column("key_id", String(128), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("body", Text, nullable=False),
)

# Agents (identity). ``attributes`` is a JSON object (team, environment, owner, labels).
agents = Table(
    "agents",
    metadata,
    Column("id", String(400), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("trust_domain", String(255), nullable=False),
    Column("attributes", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("disabled_at_us", BigInteger, nullable=True),
)

agent_keys = Table(
    "agent_keys",
    metadata,
    Column("agent_id", String(400), primary_key=True),
    Column("kid", String(128), primary_key=True),
    Column("jwk", Text, nullable=False),  # the public JWK, JSON
    Column("added_at_us", BigInteger, nullable=False),
    Column("removed_at_us", BigInteger, nullable=True),
    ForeignKeyConstraint(["agent_id"], ["agents.id"]),
)

# Replay records (assertion and DPoP proof jti): ``key`` is a hash the caller computes.
jti_replay = Table(
    "jti_replay",
    metadata,
    Column("key", LargeBinary, primary_key=True),
    Column("expires_at_us", BigInteger, nullable=False),
    Index("ix_jti_replay_expires", "expires_at_us"),
)

# Federation: ``body`` is the issuer's JSON (audience, jwks | jwks_url, claim mapping, created_by).
trusted_issuers = Table(
    "trusted_issuers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("issuer", String(256), nullable=False, unique=True),
    Column("body", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

# Policy sets (Cedar text), versioned and immutable; ``policy_ids`` is a JSON array. The
# active version lives in ``policy_active`` (one row, id 1), so finding it is one key lookup.
policy_sets = Table(
    "policy_sets",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("text", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("policy_ids", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("comment", Text, nullable=False),
)

policy_active = Table(
    "policy_active",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    ForeignKeyConstraint(["version"], ["policy_sets.version"]),
)

# Destinations (egress upstreams). ``body`` is the destination's JSON (inject, methods,
# path_prefixes, timeouts and size limits, created_by); see tether.domain.destinations.
destinations = Table(
    "destinations",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("base_url", Text, nullable=False),
    Column("secret", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

# Upstream MCP servers (tether.mcp): ``body`` is the server's JSON (transport, secrets by path,
# pinned and quarantined tool definitions); ``version`` is bumped by every change (compare-and-set).
mcp_servers = Table(
    "mcp_servers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
)

# Tasks: one agent, one intent, a lifetime. Sets (secrets, destinations, tools, chain) are
# JSON arrays. ``root_id`` and ``parent_id`` make a delegation tree revocable in one statement.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("agent_id", String(400), nullable=False),
    Column("status", String(24), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("objective", Text, nullable=False),
    Column("objective_sha256", String(64), nullable=False),
    Column("sensitivity", Integer, nullable=False),
    Column("secrets", Text, nullable=False),
    Column("destinations", Text, nullable=False),
    Column("tools", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("ended_at_us", BigInteger, nullable=True),
    Column("end_reason", String(64), nullable=True),
    Column("parent_id", String(64), nullable=True),
    Column("root_id", String(64), nullable=False),
    Column("depth", Integer, nullable=False),
    Column("chain", Text, nullable=False),
    Column("context_version", Integer, nullable=False),
    Column("approval_id", String(64), nullable=True),
    Index("ix_tasks_agent", "agent_id", "status"),
    Index("ix_tasks_status_expires", "status", "expires_at_us"),
    Index("ix_tasks_root", "root_id"),
    Index("ix_tasks_parent", "parent_id"),
)

# Grants (issuance): key-bound (``jkt``), task-scoped, with an optional use budget.
grants = Table(
    "grants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False),
    Column("agent_id", String(400), nullable=False),
    Column("jkt", String(128), nullable=False),
    Column("secret", String(256), nullable=True),
    Column("destination", String(64), nullable=True),
    Column("mode", String(16), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("max_uses", Integer, nullable=True),
    Column("uses", Integer, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Column("revoke_reason", String(64), nullable=True),
    ForeignKeyConstraint(["task_id"], ["tasks.id"]),
    Index("ix_grants_task", "task_id"),
    Index("ix_grants_secret", "secret"),
)

# Approvals: one task, one action, one resource, one task context (its hash).
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False),
    Column("agent_id", String(400), nullable=False),
    Column("action", String(32), nullable=False),
    Column("resource", String(512), nullable=False),
    Column("context_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("policies", Text, nullable=False),
    Column("requested_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("decided_at_us", BigInteger, nullable=True),
    Column("decided_by", String(128), nullable=True),
    Column("reason", Text, nullable=False),
    Column("request", Text, nullable=False, server_default="{}"),  # JSON: what exactly is approved
    Column("request_hash", String(64), nullable=False, server_default=""),
    ForeignKeyConstraint(["task_id"], ["tasks.id"]),
    Index("ix_approvals_task", "task_id", "action", "resource"),
    Index("ix_approvals_status", "status", "requested_at_us"),
)

# Leases from secret engines (dynamic mode). ``handle`` is the engine's JSON needed to revoke
# the credential; it never holds the credential itself.
leases = Table(
    "leases",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False),
    Column("task_id", String(64), nullable=False),
    Column("engine", String(64), nullable=False),
    Column("handle", Text, nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("expires_at_us", BigInteger, nullable=False),
    Column("revoked_at_us", BigInteger, nullable=True),
    Column("engine_revoked_at_us", BigInteger, nullable=True),
    ForeignKeyConstraint(["task_id"], ["tasks.id"]),
    Index("ix_leases_task", "task_id"),
    Index("ix_leases_pending", "engine_revoked_at_us", "expires_at_us"),
)

# Decision inputs (policy replay): content-addressed snapshots of what decision events name by
# hash — an entity's decision-relevant attributes or a task's context part (canonical JSON; never a
# secret value). Written once per hash, with the first event that names it; never changed.
decision_snapshots = Table(
    "decision_snapshots",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("body", Text, nullable=False),
)
