"""Which optional extra a missing import belongs to, for one clear line instead of a traceback.

``pip install tether`` is the agent-side SDK alone (httpx, cryptography, joserfc); the broker, its
HTTP server and the command line come with ``pip install 'tether[server]'``. Standard library only:
this runs before anything optional is imported.
"""

from __future__ import annotations

__all__ = ["SERVER_EXTRA", "SERVER_MODULES", "missing_extra_message"]

SERVER_EXTRA = "server"

#: Top-level modules that only the ``server`` extra installs (see pyproject.toml).
SERVER_MODULES = frozenset(
    {
        "aiosqlite",
        "alembic",
        "asyncpg",
        "cedarpy",
        "click",
        "fastapi",
        "httptools",
        "jinja2",
        "markupsafe",
        "opentelemetry",
        "prometheus_client",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "rich",
        "sqlalchemy",
        "starlette",
        "typer",
        "uvicorn",
        "uvloop",
        "yaml",
    }
)


def missing_extra_message(exc: ModuleNotFoundError, command: str | None = None) -> str | None:
    """The line to show when ``exc`` is a module of the server extra, else ``None``."""
    top = (exc.name or "").partition(".")[0]
    if top not in SERVER_MODULES:
        return None
    what = f"`tether {command}`" if command else "the tether command line"
    return (
        f"{what} needs the '{SERVER_EXTRA}' extra ({top} is not installed): "
        f"pip install 'tether[{SERVER_EXTRA}]'"
    )
