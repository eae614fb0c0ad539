"""The MCP gateway: agents reach upstream MCP servers' tools through Tether.

- :mod:`tether.mcp.servers` — upstream records, pinned tool definitions, names (pure).
- :mod:`tether.mcp.guard` — redaction of injected secrets from what upstreams answer (pure).
- :mod:`tether.mcp.upstreams` — upstream sessions per task (the SDK's ``Client``), process-tree kill.
- :mod:`tether.mcp.registry` — the upstream registry (operators): pins, quarantine, approval.
- :mod:`tether.mcp.gateway` — every ``tools/list``/``tools/call`` decided, the task's upstreams opened.
- :mod:`tether.mcp.front` — ``/mcp``: the SDK's low-level ``Server`` behind DPoP authentication.
- :mod:`tether.mcp.bridge` — ``tether mcp connect``: stdio for local clients, forwarded with DPoP.

This package imports nothing heavy on its own; import the module you need.
"""
