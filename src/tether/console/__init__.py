"""The web console at ``/ui``: server-rendered pages (Jinja2, htmx served by Tether itself).

A thin edge over the broker, like the JSON API: operators sign in with their token (exchanged for
a session cookie) and read tasks, approvals, audit, reach, policies, secrets' metadata and
destinations; approvers approve and deny. See docs/console.md.
"""

from tether.console.routes import router

__all__ = ["router"]
