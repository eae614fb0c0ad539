"""What a standard MCP client discovers about the gateway (RFC 9728), without the MCP SDK: the
app imports this at startup, and the SDK (seconds of imports) only when ``/mcp`` is first called."""

from __future__ import annotations

from typing import Any

__all__ = ["MCP_PATH", "protected_resource_metadata"]

MCP_PATH = "/mcp"


def protected_resource_metadata(public_url: str) -> dict[str, Any]:
    """RFC 9728 metadata for ``/mcp``: Tether is its own authorization server; tokens are DPoP-bound."""
    base = public_url.rstrip("/")
    return {
        "resource": base + MCP_PATH,
        "authorization_servers": [base],
        "bearer_methods_supported": ["header"],
        "dpop_bound_access_tokens_required": True,
        "dpop_signing_alg_values_supported": ["Ed25519", "EdDSA", "ES256"],
        "resource_name": "Tether MCP gateway",
        "resource_documentation": "https://github.com/tether/tether/blob/main/docs/mcp.md",
    }
