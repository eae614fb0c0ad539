"""Agent authentication: the token endpoint and the check every agent request passes.

Token endpoint (``POST /v1/auth/token``): a DPoP proof is required, and the access token is
bound to the proof's key (``cnf.jkt``). Grants:

* ``client_credentials`` with an RFC 7523 ``private_key_jwt`` assertion signed by one of the
  agent's registered keys; the DPoP key must be that same key;
* RFC 8693 token exchange of a JWT from a trusted issuer, mapped to a registered agent; the
  DPoP key is whatever key the workload proves it holds.

Every agent request then carries ``Authorization: DPoP <token>`` and a fresh proof. Its jti is
remembered in the store for the proof's lifetime, so a replay is refused on every node. The
agent is read from the store on each request: a disabled agent's tokens stop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from tether.audit import Actor, AuditLog
from tether.broker.agents import AgentService
from tether.clock import Clock
from tether.crypto.jose import CompactJws, PublicKey, parse_jws, parse_public_jwk
from tether.domain.agents import AgentRecord, TrustedIssuer, agent_id
from tether.errors import AuthenticationError, InvalidInputError, RateLimitedError, SealedError, TetherError
from tether.identity.assertions import peek_issuer, verify_client_assertion
from tether.identity.dpop import DpopProof, verify_dpop_proof
from tether.identity.federation import (
    FederationRule,
    parse_jwks,
    peek_federated_issuer,
    verify_federated_token,
)
from tether.identity.refusals import LimitReached, RefusalLimiter, RefusalLimits
from tether.identity.signing import (
    TokenSigningKey,
    TokenSigningKeys,
    load_or_create_token_keys,
    rotate_token_keys,
)
from tether.identity.tokens import (
    AccessTokenCache,
    IssuedToken,
    issue_access_token,
    verify_access_token,
)
from tether.store.base import RememberJti, Storage

__all__ = ["ASSERTION_TYPE", "JWT_TOKEN_TYPE", "TOKEN_EXCHANGE", "AgentCaller", "AuthService", "TokenGrant"]


async def _fetch_jwks(url: str) -> list[PublicKey]:
    """GET a JWKS, reading at most MAX_JWKS_BYTES of it (streamed, so a huge body costs nothing)."""
    async with (
        httpx.AsyncClient(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False) as http,
        http.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
    data = json.loads(bytes(body))
    if not isinstance(data, dict):
        raise TypeError("JWKS is not a JSON object")
    return parse_jwks(data)


def _claimed(assertion: str) -> str | None:
    """Who an assertion claims to be (unverified), to name the actor of a refusal."""
    try:
        return peek_issuer(assertion)
    except AuthenticationError:
        return None


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Which grant a token came from: a key-bound token stops when its key is removed; a federated
# one is bound to a key the workload generated, unknown to the registry.
BINDING_CLAIM = "tether_binding"
KEY_BOUND = "agent-key"
FEDERATED = "federated"
JWKS_CACHE_SECONDS = 300
JWKS_FAILURE_SECONDS = 30
KEY_RELOAD_SECONDS = 5.0
# Replay records outlive the credential's acceptance window (which includes clock leeway).
REPLAY_MARGIN = timedelta(seconds=60)
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,256}")
JWKS_TIMEOUT_SECONDS = 5.0
VERIFIED_TOKENS_MAX = 10_000
MAX_JWKS_BYTES = 64 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What the token endpoint hands out."""

    token: IssuedToken
    agent: AgentRecord
    grant_type: str
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class AgentCaller:
    """An authenticated agent request: the agent, re-read from the store, and the thumbprint of
    the key its access token is bound to (what grants are bound to)."""

    agent: AgentRecord
    jkt: str
    #: Set when the request's proof was not yet recorded as used (``defer_replay``): the service
    #: must record it in the same transaction as its effect (see :meth:`AuthService.replay_effect`).
    replay: RememberJti | None = None


class AuthService:
    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        agents: AgentService,
        *,
        trust_domain: str,
        token_ttl_seconds: int = 600,
        refusal_limits: RefusalLimits | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._agents = agents
        self._trust_domain = trust_domain
        self._ttl = token_ttl_seconds
        self._keys: TokenSigningKeys | None = None
        self._jwks_cache: dict[str, tuple[float, list[PublicKey] | None]] = {}
        self._jwks_locks: dict[str, asyncio.Lock] = {}
        self._root_key: bytes | None = None
        self._last_reload = 0.0  # monotonic time of the last reload for an unknown kid
        # Verified access tokens by their exact text, until they expire: the signature is not
        # checked again; the agent and its keys are still read on every request.
        self._verified_tokens = AccessTokenCache(VERIFIED_TOKENS_MAX)
        # Refused token requests per client id and address (tether.identity.refusals).
        self._limiter = RefusalLimiter(refusal_limits or RefusalLimits())

    # -- keys --------------------------------------------------------------------------
    async def attach_keys(self, root_key: bytes) -> None:
        self._root_key = root_key
        self._keys = await load_or_create_token_keys(self._storage, root_key, self._clock.now())

    async def rotate_keys(self, root_key: bytes) -> str:
        """A new token-signing key (the previous one keeps verifying live tokens); its kid."""
        self._keys = await rotate_token_keys(self._storage, root_key, self._clock.now())
        return self._keys.active.kid

    async def _refresh_for(self, token: CompactJws) -> None:
        """A token signed by a key this node has not seen: another node rotated. Reload the
        keys, at most once every few seconds (a flood of bogus kids costs one read each time)."""
        if self._root_key is None or self._keys is None:
            return
        kid = token.header.get("kid")
        if not isinstance(kid, str) or self._keys.key_for(kid) is not None:
            return
        if time.monotonic() - self._last_reload < KEY_RELOAD_SECONDS:
            return
        self._last_reload = time.monotonic()
        self._keys = await load_or_create_token_keys(self._storage, self._root_key, self._clock.now())

    def detach_keys(self) -> None:
        self._keys = None
        self._root_key = None

    def _signing_keys(self) -> TokenSigningKeys:
        if self._keys is None:
            raise SealedError("Tether is sealed: no access tokens can be issued or checked")
        return self._keys

    def jwks(self) -> dict[str, object]:
        return dict(self._signing_keys().public_jwks(self._clock.now(), self._ttl))

    def active_signing_key(self) -> TokenSigningKey:
        """The key Tether signs with now (published in :meth:`jwks`), for its other signed
        statements: Security Event Tokens (``tether.broker.signals``). Sealed: :class:`SealedError`."""
        return self._signing_keys().active

    # -- the token endpoint ------------------------------------------------------------------
    async def issue_token(
        self, form: Mapping[str, str], dpop: str | None, token_url: str, *, address: str | None = None
    ) -> TokenGrant:
        """Check a token request; record the outcome (before answering) either way.

        ``address`` is the caller's source address. :class:`RateLimitedError` (429, nothing
        recorded one by one) when that address, or the claimed client id of a refused request,
        used up its refusals in the current window (see :mod:`tether.identity.refusals`)."""
        if self._limiter.any_blocked:  # else no time is read: nothing on the accepted path
            retry = self._limiter.blocked_address(address, self._clock.now().timestamp())
            if retry is not None:
                raise RateLimitedError(retry)
        grant_type = form.get("grant_type", "")
        claimed: str | None = None
        try:
            self._signing_keys()  # sealed: refuse before any state (replay records) is written
            if not dpop:
                raise AuthenticationError("a DPoP proof is required", code="invalid_dpop_proof")
            now = self._clock.now()
            proof = verify_dpop_proof(dpop, method="POST", url=token_url, now=now)
            # The proof is single-use whatever happens next; checking it first means a replayed
            # proof cannot burn an assertion or subject token it carries.
            await self._remember(
                proof.replay_key, proof.replay_expires_at, "DPoP proof replayed", "invalid_dpop_proof"
            )
            if grant_type == "client_credentials":
                claimed = _claimed(form.get("client_assertion", ""))
                agent = await self._client_credentials(form, proof, token_url)
                binding = KEY_BOUND
            elif grant_type == TOKEN_EXCHANGE:
                agent = await self._token_exchange(form)
                binding = FEDERATED
            else:
                raise AuthenticationError(
                    f"grant_type {grant_type[:60]!r} is not supported", code="unsupported_grant_type"
                )
            issued = issue_access_token(
                self._signing_keys(),
                agent_id=agent.id,
                jkt=proof.jkt,
                trust_domain=self._trust_domain,
                now=now,
                ttl_seconds=self._ttl,
                extra={BINDING_CLAIM: binding},
            )
        except AuthenticationError as exc:
            # Nothing about the caller is verified here: a claimed id is data, never the actor.
            await self._token_refused(exc, grant_type, claimed, address)
            raise
        except TetherError:
            raise  # sealed, storage down: the caller gets 503 and nothing was issued
        except Exception as exc:  # noqa: BLE001 - any surprise on hostile input is a refusal
            refusal = AuthenticationError(
                f"malformed token request ({type(exc).__name__})", code="invalid_request"
            )
            await self._token_refused(refusal, grant_type, claimed, address)
            raise refusal from None
        await self._audit.record(
            "auth.token",
            Actor.agent(agent.id),
            resource=f"agent:{agent.id}",
            reason=grant_type,
            data={"token_jti": issued.jti, "jkt": proof.jkt, "expires_at": issued.expires_at.isoformat()},
        )
        return TokenGrant(token=issued, agent=agent, grant_type=grant_type, ttl_seconds=self._ttl)

    async def refuse_token_request(self, exc: AuthenticationError, *, address: str | None = None) -> None:
        """Record a token request refused before it could be read (content type, form); raises
        :class:`RateLimitedError` instead when ``address`` is over its limit."""
        retry = self._limiter.blocked_address(address, self._clock.now().timestamp())
        if retry is not None:
            raise RateLimitedError(retry)
        await self._token_refused(exc, "malformed request", None, address)

    async def _token_refused(
        self, exc: AuthenticationError, context: str, claimed: str | None, address: str | None
    ) -> None:
        """A refused token request: audited, unless its client id or address used up its
        refusals in this window (then :class:`RateLimitedError`, counted, not audited). The
        refusal that reaches a limit adds one summary event for the window."""
        now = self._clock.now().timestamp()
        retry = self._limiter.over_limit(claimed, address, now)
        if retry is not None:
            raise RateLimitedError(retry) from None
        await self._refused("auth.token", None, exc, context, claimed=claimed)
        for reached in self._limiter.refused(claimed, address, now):
            await self._limit_reached(reached, now)

    async def _limit_reached(self, reached: LimitReached, now: float) -> None:
        """One event per client id or address and window, instead of one per refusal."""
        until = datetime.fromtimestamp(reached.until, UTC)
        log.warning(
            "token requests: %s %s reached %d refusals in %d s; further refusals answered 429 until %s",
            reached.scope,
            reached.key,
            reached.refusals,
            reached.window_seconds,
            until.isoformat(),
            extra={"limit": reached.scope, "limited": reached.key},
        )
        await self._audit.record(
            "auth.token",
            self._audit.actor,
            reason=f"rate limited: {reached.scope} reached {reached.refusals} refusals in "
            f"{reached.window_seconds} s",
            data={
                "limit": reached.scope,
                "key": reached.key,
                "refusals": reached.refusals,
                "window_seconds": reached.window_seconds,
                "until": until.isoformat(),
                "retry_after_seconds": reached.retry_after_seconds(now),
            },
        )

    async def _client_credentials(
        self, form: Mapping[str, str], proof: DpopProof, token_url: str
    ) -> AgentRecord:
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise AuthenticationError(
                f"client_credentials needs client_assertion_type={ASSERTION_TYPE} and a client_assertion",
                code="invalid_client",
            )
        assertion = form["client_assertion"]
        claimed = peek_issuer(assertion)
        agent = await self._agents.active_agent(claimed)
        keys = [parse_public_jwk(dict(key.jwk)) for key in agent.active_keys]
        checked = verify_client_assertion(
            assertion, agent_keys=keys, audience=token_url, now=self._clock.now()
        )
        if proof.jkt != checked.kid:
            raise AuthenticationError(
                "the DPoP proof must be signed by the key that signed the client assertion",
                code="invalid_dpop_proof",
            )
        await self._remember(
            checked.replay_key, checked.expires_at, "client assertion replayed", "invalid_client"
        )
        return agent

    async def _token_exchange(self, form: Mapping[str, str]) -> AgentRecord:
        token = form.get("subject_token", "")
        if not token or form.get("subject_token_type") not in {JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE}:
            raise AuthenticationError(
                f"token exchange needs a subject_token of type {JWT_TOKEN_TYPE}", code="invalid_request"
            )
        claimed_issuer = peek_federated_issuer(token)
        if not _PRINTABLE.fullmatch(claimed_issuer):
            raise AuthenticationError("the subject token's issuer is not trusted", code="invalid_grant")
        issuer = await self._storage.get_trusted_issuer_by_issuer(claimed_issuer)
        if issuer is None:
            raise AuthenticationError("the subject token's issuer is not trusted", code="invalid_grant")
        rule = FederationRule(
            issuer=issuer.issuer,
            audience=issuer.audience,
            keys=await self._issuer_keys(issuer),
            subject_claim=issuer.subject_claim,
            subject_pattern=re.compile(issuer.subject_pattern),
        )
        identity = verify_federated_token(token, rule, now=self._clock.now())
        try:
            agent = await self._agents.active_agent(agent_id(self._trust_domain, identity.agent_name))
        except (InvalidInputError, AuthenticationError):
            # RFC 8693: a subject token that names no usable agent is a bad grant.
            raise AuthenticationError(
                "the federated subject maps to no registered, enabled agent", code="invalid_grant"
            ) from None
        # Subject tokens are not single-use: workloads present the same projected token (a
        # Kubernetes service-account token, a JWT-SVID) for its whole life, and every exchange
        # is bound to the key the presenter proved with DPoP.
        return agent

    async def _issuer_keys(self, issuer: TrustedIssuer) -> list[PublicKey]:
        """The issuer's verification keys: inline, or fetched from its JWKS URL and cached for
        a few minutes. Any failure to get them refuses the exchange (fail closed)."""
        if issuer.jwks is not None:
            return parse_jwks(dict(issuer.jwks))
        url = issuer.jwks_url or ""
        # One fetch per URL at a time, and a failure is remembered for a while: forged tokens
        # naming a trusted issuer must not turn Tether into a request amplifier.
        async with self._jwks_locks.setdefault(url, asyncio.Lock()):
            now = time.monotonic()
            cached = self._jwks_cache.get(url)
            if cached is not None and cached[0] > now:
                if cached[1] is None:
                    raise AuthenticationError("the issuer's keys are not available", code="invalid_grant")
                return cached[1]
            try:
                keys = await _fetch_jwks(url)
            except (httpx.HTTPError, ValueError, TypeError, RecursionError, InvalidInputError) as exc:
                log.warning("cannot fetch the JWKS of issuer %s: %s", issuer.name, type(exc).__name__)
                self._jwks_cache[url] = (now + JWKS_FAILURE_SECONDS, None)
                raise AuthenticationError(
                    "the issuer's keys are not available", code="invalid_grant"
                ) from None
            self._jwks_cache[url] = (now + JWKS_CACHE_SECONDS, keys)
            return keys

    # -- every agent request --------------------------------------------------------------------
    async def authenticate(
        self, authorization: str | None, dpop: str | None, method: str, url: str
    ) -> AgentRecord:
        """The agent behind a request, or :class:`AuthenticationError` (recorded)."""
        return (await self.authenticate_caller(authorization, dpop, method, url)).agent

    async def authenticate_caller(
        self,
        authorization: str | None,
        dpop: str | None,
        method: str,
        url: str,
        *,
        defer_replay: bool = False,
    ) -> AgentCaller:
        """The agent behind a request and the key its token is bound to (``jkt``).

        With ``defer_replay`` the proof's one-time identifier is not recorded here but handed back
        (:attr:`AgentCaller.replay`) for the service to record atomically with what the request
        does (one transaction instead of two on the activation path). A service must then attach
        it to every write it makes for the request; a request that writes nothing changed nothing,
        so replaying it gains nothing either."""
        replay: RememberJti | None = None
        subject: str | None = None
        try:
            self._signing_keys()  # sealed: refuse before any state is written
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "dpop" or not token.strip():
                raise AuthenticationError(
                    "agent requests need Authorization: DPoP <token>", code="invalid_token"
                )
            if not dpop:
                raise AuthenticationError("a DPoP proof is required", code="invalid_dpop_proof")
            now = self._clock.now()
            token = token.strip()
            presented: str | CompactJws = token
            if not self._verified_tokens.knows(token, self._signing_keys(), self._trust_domain):
                # Not verified before: decoded once here, its key reloaded if another node rotated.
                # A token verified before is answered from the cache without being decoded.
                presented = parse_jws(token)
                await self._refresh_for(presented)
            claims = verify_access_token(
                presented,
                keys=self._signing_keys(),
                trust_domain=self._trust_domain,
                now=now,
                cache=self._verified_tokens,
            )
            subject = claims.agent_id
            proof = verify_dpop_proof(
                dpop, method=method, url=url, now=now, access_token=token, expected_jkt=claims.jkt
            )
            if defer_replay:
                keep_until = max(proof.replay_expires_at, now) + REPLAY_MARGIN
                replay = RememberJti(proof.replay_key, keep_until, now)
            else:
                await self._remember(
                    proof.replay_key, proof.replay_expires_at, "DPoP proof replayed", "invalid_dpop_proof"
                )
            try:
                agent = await self._agents.active_agent(claims.agent_id)
            except AuthenticationError as exc:
                # RFC 6750 §3.1: on a resource request the token is what is no longer good.
                raise AuthenticationError(str(exc), code="invalid_token") from None
            if claims.extra.get(BINDING_CLAIM) != FEDERATED and claims.jkt not in {
                key.kid for key in agent.active_keys
            }:
                # A key-bound token dies with its key: removing a key revokes what it obtained.
                raise AuthenticationError("the key this token is bound to was removed", code="invalid_token")
        except AuthenticationError as exc:
            await self._refused("auth.failed", subject, exc, f"{method} {url}")
            raise
        except TetherError:
            raise
        except Exception as exc:  # noqa: BLE001 - fail closed on anything unexpected
            refusal = AuthenticationError(
                f"malformed credentials ({type(exc).__name__})", code="invalid_token"
            )
            await self._refused("auth.failed", subject, refusal, f"{method} {url}")
            raise refusal from None
        return AgentCaller(agent=agent, jkt=claims.jkt, replay=replay)

    async def refuse_replay(self, caller: AgentCaller, context: str) -> AuthenticationError:
        """A deferred proof turned out to be a replay: record the refusal, return the error."""
        exc = AuthenticationError("DPoP proof replayed", code="invalid_dpop_proof")
        await self._refused("auth.failed", caller.agent.id, exc, context)
        return exc

    async def _remember(self, key: bytes, expires_at: datetime, message: str, code: str) -> None:
        """Single use, across every node: the store keeps the key until ``expires_at``."""
        now = self._clock.now()
        keep_until = max(expires_at, now) + REPLAY_MARGIN
        if not await self._storage.remember_jti(key, expires_at=keep_until, now=now):
            raise AuthenticationError(message, code=code)

    async def _refused(
        self,
        kind: str,
        subject: str | None,
        exc: AuthenticationError,
        context: str,
        *,
        claimed: str | None = None,
    ) -> None:
        """Record a refusal. ``subject`` is a verified agent id (the actor); ``claimed`` an
        unverified one (kept as data, so nobody can pin a refusal on another agent)."""
        actor = self._audit.actor
        if subject is not None:
            with contextlib.suppress(TetherError):
                actor = Actor.agent(subject)
        data = {"context": context[:200]}
        if claimed is not None:
            data["claimed_agent"] = claimed[:300]
        await self._audit.record(kind, actor, reason=f"refused: {exc.code}: {str(exc)[:200]}", data=data)
