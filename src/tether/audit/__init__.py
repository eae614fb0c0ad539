"""The tamper-evident audit log: hash chain, group commit, sinks, checkpoints, verification.

Events are pure data (``tether.domain.events``); this package does the I/O around them.
Build one :class:`AuditLog` per node and record every action through it, before acting.
"""

from tether.audit.checkpoint import (
    Checkpoint,
    MalformedCheckpointError,
    checkpoint_from_json,
    checkpoint_to_json,
    load_checkpoint,
    sign_checkpoint,
)
from tether.audit.export import export_jsonl, read_jsonl
from tether.audit.keys import AUDIT_KEYS_META, AuditKeys, load_or_create_audit_keys
from tether.audit.log import AuditLog
from tether.audit.query import MAX_QUERY_LIMIT, AuditFilter, AuditPage, query_events
from tether.audit.sinks import AuditSink, JsonlFileSink, StdoutSink, event_line
from tether.audit.verify import (
    ChainVerifier,
    Problem,
    VerifyResult,
    result_line,
    verify_events,
    verify_jsonl,
    verify_store,
)
from tether.domain.event_records import event_from_json, event_to_json
from tether.domain.events import (
    EVENT_KINDS,
    Actor,
    ActorType,
    DecisionSummary,
    Event,
    Fingerprinter,
    Sensitive,
)

__all__ = [
    "AUDIT_KEYS_META",
    "EVENT_KINDS",
    "MAX_QUERY_LIMIT",
    "Actor",
    "ActorType",
    "AuditFilter",
    "AuditKeys",
    "AuditLog",
    "AuditPage",
    "AuditSink",
    "ChainVerifier",
    "Checkpoint",
    "DecisionSummary",
    "Event",
    "Fingerprinter",
    "JsonlFileSink",
    "MalformedCheckpointError",
    "Problem",
    "Sensitive",
    "StdoutSink",
    "VerifyResult",
    "checkpoint_from_json",
    "checkpoint_to_json",
    "event_from_json",
    "event_line",
    "event_to_json",
    "export_jsonl",
    "load_checkpoint",
    "load_or_create_audit_keys",
    "query_events",
    "read_jsonl",
    "result_line",
    "sign_checkpoint",
    "verify_events",
    "verify_jsonl",
    "verify_store",
]
