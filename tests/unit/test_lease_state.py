"""A lease's state for operators is a function of its timestamps and ``now``."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tether.broker.leases import FAILED_AFTER_SECONDS, LeaseState, lease_state
from tether.domain.tasks import Lease, new_id

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LEASE = Lease(
    id=new_id("lse"),
    grant_id=new_id("grt"),
    task_id=new_id("tsk"),
    engine="pg",
    handle={},
    created_at=NOW - timedelta(minutes=5),
    expires_at=NOW + timedelta(minutes=5),
)


def test_a_lease_is_active_until_it_ends_then_revoking_then_failed_until_the_engine_confirms() -> None:
    assert lease_state(LEASE, NOW) is LeaseState.ACTIVE
    ended = replace(LEASE, revoked_at=NOW)
    assert lease_state(ended, NOW) is LeaseState.REVOKING
    assert lease_state(ended, NOW + timedelta(seconds=FAILED_AFTER_SECONDS - 1)) is LeaseState.REVOKING
    assert lease_state(ended, NOW + timedelta(seconds=FAILED_AFTER_SECONDS)) is LeaseState.FAILED
    assert lease_state(replace(ended, engine_revoked_at=NOW), NOW + timedelta(hours=1)) is LeaseState.REVOKED


def test_an_expired_lease_counts_from_its_expiry() -> None:
    later = LEASE.expires_at + timedelta(seconds=1)
    assert lease_state(LEASE, later) is LeaseState.REVOKING
    assert lease_state(LEASE, LEASE.expires_at + timedelta(seconds=FAILED_AFTER_SECONDS)) is LeaseState.FAILED
