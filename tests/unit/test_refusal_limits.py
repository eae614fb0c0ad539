"""Counting refused token requests (``tether.identity.refusals``): pure, time passed in."""

from __future__ import annotations

import pytest

from tether.identity.refusals import LimitReached, RefusalLimiter, RefusalLimits, address_key

LIMITS = RefusalLimits(window_seconds=60, per_client=3, per_address=5)
T0 = 6000.0  # the start of a window (a multiple of 60)


def test_a_client_reaches_its_limit_once_per_window() -> None:
    limiter = RefusalLimiter(LIMITS)
    assert limiter.refused("a", None, T0) == []
    assert limiter.refused("a", None, T0 + 1) == []
    assert limiter.over_limit("a", None, T0 + 2) is None
    assert limiter.refused("a", None, T0 + 2) == [LimitReached("client", "a", 3, 60, T0 + 60)]
    assert limiter.over_limit("a", None, T0 + 10) == 50  # until the window ends
    assert limiter.over_limit("b", None, T0 + 10) is None  # another client is not affected
    assert limiter.refused("a", None, T0 + 11) == []  # reported once, not again
    assert limiter.blocked_address(None, T0 + 11) is None  # a client limit blocks nothing up front


def test_a_new_window_starts_from_zero() -> None:
    limiter = RefusalLimiter(LIMITS)
    for _ in range(3):
        limiter.refused("a", None, T0 + 59)
    assert limiter.over_limit("a", None, T0 + 59.5) == 1  # never 0: Retry-After is at least 1
    assert limiter.over_limit("a", None, T0 + 60) is None
    assert limiter.refused("a", None, T0 + 60) == []


def test_an_address_is_blocked_until_the_window_ends() -> None:
    limiter = RefusalLimiter(LIMITS)
    reached = [limiter.refused(f"client-{i}", "203.0.113.9", T0 + i) for i in range(5)]
    assert reached[:4] == [[], [], [], []]
    assert reached[4] == [LimitReached("address", "203.0.113.9", 5, 60, T0 + 60)]
    assert limiter.blocked_address("203.0.113.9", T0 + 30) == 30
    assert limiter.blocked_address("203.0.113.10", T0 + 30) is None
    assert limiter.blocked_address("203.0.113.9", T0 + 60) is None  # next window: free again
    assert limiter.blocked_address("203.0.113.9", T0 + 61) is None


def test_client_and_address_are_counted_together() -> None:
    limiter = RefusalLimiter(RefusalLimits(60, per_client=2, per_address=2))
    limiter.refused("a", "198.51.100.1", T0)
    reached = limiter.refused("a", "198.51.100.1", T0)
    assert {r.scope for r in reached} == {"client", "address"}


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),  # the same /64: one host
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("127.0.0.1", None),  # loopback: this machine, or a local proxy without X-Forwarded-For
        ("127.8.9.10", None),
        ("::1", None),
        ("::ffff:127.0.0.1", None),
        ("testclient", None),
        ("", None),
        (None, None),
    ],
)
def test_what_an_address_counts_as(address: str | None, key: str | None) -> None:
    assert address_key(address) == key


def test_loopback_callers_are_limited_per_client_only() -> None:
    limiter = RefusalLimiter(RefusalLimits(60, per_client=100, per_address=1))
    assert limiter.refused(None, "127.0.0.1", T0) == []
    assert limiter.blocked_address("127.0.0.1", T0) is None


def test_memory_is_bounded() -> None:
    limiter = RefusalLimiter(LIMITS, max_keys=100)
    for i in range(1000):
        limiter.refused(f"client-{i}", None, T0)
    assert len(limiter._counts) <= 100
    for i in range(200):  # a later window drops the earlier one's counters first
        limiter.refused(f"late-{i}", None, T0 + 60)
    assert all(window == (T0 + 60) // 60 for window, _ in limiter._counts.values())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RefusalLimits(60, per_client=0)
