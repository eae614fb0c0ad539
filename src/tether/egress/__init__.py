"""Credential-injecting egress: agents call registered destinations through Tether, which
decides each request, injects the secret, and keeps it out of the answer."""

from tether.egress.leakguard import REDACTED, LeakGuard, StreamRedactor, secret_forms
from tether.egress.paths import AgentPath, UnsafePathError, filter_query, normalise_path, upstream_url
from tether.egress.proxy import (
    EgressError,
    EgressProxy,
    EgressRequest,
    EgressResponse,
    InjectionError,
    RequestBodyTooLargeError,
    UpstreamResponseTooLargeError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

__all__ = [
    "REDACTED",
    "AgentPath",
    "EgressError",
    "EgressProxy",
    "EgressRequest",
    "EgressResponse",
    "InjectionError",
    "LeakGuard",
    "RequestBodyTooLargeError",
    "StreamRedactor",
    "UnsafePathError",
    "UpstreamResponseTooLargeError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
    "filter_query",
    "normalise_path",
    "secret_forms",
    "upstream_url",
]
