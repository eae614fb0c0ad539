"""Every error of the tree has its problem answer, whoever raises it."""

from __future__ import annotations

import json

from tether import errors
from tether.api.problems import problem_for


def test_a_rate_limited_error_is_429_with_retry_after_wherever_it_is_raised() -> None:
    response = problem_for(errors.RateLimitedError(7))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    body = json.loads(bytes(response.body))
    assert body["type"] == "urn:tether:problem:too-many-requests"


def test_an_unexpected_error_is_an_opaque_500() -> None:
    response = problem_for(RuntimeError("internal detail that must not leak"))
    assert response.status_code == 500
    assert b"internal detail" not in bytes(response.body)
