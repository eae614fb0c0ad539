"""HTTP API: FastAPI routers, thin (parse → broker → render)."""

from tether.api.app import create_app

__all__ = ["create_app"]
