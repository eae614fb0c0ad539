"""A small synchronous operator client for the HTTP API (bearer token, problem+json errors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from tether import __version__
from tether.cli.output import EXIT_USAGE, CommandError

__all__ = [
    "DEFAULT_ADDR",
    "APIError",
    "OperatorClient",
    "check_secret_path",
    "check_secret_prefix",
    "secret_url",
    "url_segment",
]

DEFAULT_ADDR = "http://127.0.0.1:8420"
_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


class APIError(CommandError):
    """The API answered with an error; the message is the problem's ``detail`` (or ``title``)."""

    def __init__(self, status: int, message: str, problem_type: str = "") -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.detail = message
        self.problem_type = problem_type


def check_secret_path(path: str) -> str:
    """``path`` if it is a valid secret path, else a usage error with the validator's reason.

    Checked here, before any URL is built: an HTTP client normalises ``.`` and ``..``
    segments away before sending, so ``junk/../prod/db`` would otherwise reach the server
    as ``prod/db`` and pass its validation."""
    from tether.domain.secrets import validate_path
    from tether.errors import InvalidInputError

    try:
        return validate_path(path)
    except InvalidInputError as exc:
        raise CommandError(f"invalid secret path {path[:80]!r}: {exc}", EXIT_USAGE) from None


def check_secret_prefix(prefix: str) -> str:
    """A listing prefix (empty, or a path optionally ending in ``/``), else a usage error."""
    from tether.domain.secrets import validate_prefix
    from tether.errors import InvalidInputError

    try:
        return validate_prefix(prefix)
    except InvalidInputError as exc:
        raise CommandError(f"invalid secret prefix {prefix[:80]!r}: {exc}", EXIT_USAGE) from None


def secret_url(path: str, suffix: str = "") -> str:
    """``/v1/secrets/<path>`` for a path that passed :func:`check_secret_path` (checked again
    here, so no URL is ever built from an unvalidated path)."""
    segments = check_secret_path(path).split("/")
    return "/v1/secrets/" + "/".join(url_segment(s) for s in segments) + suffix


def url_segment(value: str) -> str:
    """One URL path segment, percent-encoded (``/`` too). Empty, ``.`` and ``..`` are refused:
    the HTTP client would collapse them and send the request to another resource."""
    if value in {"", ".", ".."}:
        raise CommandError(f"{value!r} is not a valid name or id", EXIT_USAGE)
    return quote(value, safe="")


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
        headers = self._headers(auth)
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = httpx.Timeout(timeout, connect=5.0)
        try:
            response = self._http.request(method, url, json=json, params=params, headers=headers, **extra)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
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

    def stream(
        self,
        url: str,
        write: Callable[[bytes], object],
        *,
        params: dict[str, Any] | None = None,
    ) -> int:
        """GET ``url`` and hand the body to ``write`` chunk by chunk, as it arrives; returns the
        number of bytes. An error status becomes :class:`APIError` before anything is written."""
        total = 0
        try:
            with self._http.stream("GET", url, params=params, headers=self._headers(True)) as response:
                if response.status_code >= 400:
                    response.read()
                    message, problem_type = _problem_message(response)
                    raise APIError(response.status_code, message, problem_type)
                for chunk in response.iter_bytes():
                    write(chunk)
                    total += len(chunk)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        return total

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            raise CommandError(
                "no operator token: set TETHER_TOKEN (or pass --token); "
                "`tether init` printed the first admin token",
                EXIT_USAGE,
            )
        return {"Authorization": f"Bearer {self._token}"}

    def _transport_error(self, exc: httpx.HTTPError) -> CommandError:
        if isinstance(exc, httpx.ConnectError):
            return CommandError(
                f"cannot connect to Tether at {self.addr}: is `tether server` running there? "
                "(set TETHER_ADDR or --addr)"
            )
        if isinstance(exc, httpx.TimeoutException):
            return CommandError(f"Tether at {self.addr} did not answer in time")
        if isinstance(exc, httpx.RemoteProtocolError):
            return CommandError(f"the connection to {self.addr} broke off before the answer was complete")
        return CommandError(f"request to {self.addr} failed: {type(exc).__name__}")

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> Any:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> Any:
        return self.request("DELETE", url, **kwargs)
