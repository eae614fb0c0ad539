"""A small synchronous operator client for the HTTP API (bearer token, problem+json errors)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from tether import __version__
from tether.cli.output import EXIT_USAGE, CommandError

__all__ = ["DEFAULT_ADDR", "APIError", "OperatorClient", "secret_url"]

DEFAULT_ADDR = "http://127.0.0.1:8420"
_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class APIError(CommandError):
    """The API answered with an error; the message is the problem's ``detail`` (or ``title``)."""

    def __init__(self, status: int, message: str, problem_type: str = "") -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.detail = message
        self.problem_type = problem_type


def secret_url(path: str, suffix: str = "") -> str:
    """``/v1/secrets/<path>``, each segment percent-encoded; the server validates the path."""
    return "/v1/secrets/" + quote(path, safe="/") + suffix


def _problem_message(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = body.get("detail") or body.get("title")
        if isinstance(text, str) and text:
            return text, str(body.get("type", ""))
    return response.reason_phrase or "request failed", ""


class OperatorClient:
    """Talks to one Tether node as one operator. Use as a context manager."""

    def __init__(self, addr: str, token: str | None, *, timeout: httpx.Timeout = _TIMEOUT) -> None:
        parts = urlsplit(addr)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise CommandError(
                f"--addr / TETHER_ADDR must be an http(s) URL such as {DEFAULT_ADDR}, not {addr!r}",
                EXIT_USAGE,
            )
        self.addr = addr.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=self.addr,
            timeout=timeout,
            headers={"User-Agent": f"tether-cli/{__version__}", "Accept": "application/json"},
            follow_redirects=False,
        )

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        accept_status: frozenset[int] = frozenset(),
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for 204). Errors become
        :class:`APIError` (the API said no) or :class:`CommandError` (no answer at all)."""
        headers: dict[str, str] = {}
        if auth:
            if not self._token:
                raise CommandError(
                    "no operator token: set TETHER_TOKEN (or pass --token); "
                    "`tether init` printed the first admin token",
                    EXIT_USAGE,
                )
            headers["Authorization"] = f"Bearer {self._token}"
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=5.0)
        try:
            response = self._http.request(method, url, json=json, params=params, headers=headers, **extra)
        except httpx.ConnectError:
            raise CommandError(
                f"cannot connect to Tether at {self.addr}: is `tether server` running there? "
                "(set TETHER_ADDR or --addr)"
            ) from None
        except httpx.TimeoutException:
            raise CommandError(f"Tether at {self.addr} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CommandError(f"request to {self.addr} failed: {type(exc).__name__}") from None
        if response.status_code >= 400 and response.status_code not in accept_status:
            message, problem_type = _problem_message(response)
            raise APIError(response.status_code, message, problem_type)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise CommandError(
                f"{self.addr} answered HTTP {response.status_code} with a body that is not JSON; "
                "is TETHER_ADDR pointing at Tether?"
            ) from None

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Any:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)
