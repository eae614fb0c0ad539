"""Operations: health, seal, unseal, keys, metrics."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tether import __version__
from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import Health, KeyStatus, KeyVersionOut, RotationOut, SealStatus, Unseal
from tether.api.problems import Problem
from tether.broker.access import authorize
from tether.domain.operators import Permission
from tether.errors import DecryptionError, InvalidInputError, StorageError

router = APIRouter()


@router.get("/v1/sys/health", tags=["sys"])
async def health(broker: BrokerDep, response: Response) -> Health:
    """Liveness and seal state. Unauthenticated; answers 503 when storage is unreachable."""
    try:
        await broker.storage.ping()
        storage_ok = True
    except StorageError:
        storage_ok = False
        response.status_code = 503
    sealed = broker.keys.sealed
    return Health(
        status="unavailable" if not storage_ok else "sealed" if sealed else "ok",
        sealed=sealed,
        storage=broker.storage.backend,
        storage_ok=storage_ok,
        version=__version__,
        node_id=broker.settings.node_id,
    )


@router.post("/v1/sys/seal", tags=["sys"])
async def seal(broker: BrokerDep, operator: OperatorDep, request: Request) -> SealStatus:
    """Drop every key from memory: no secret is served until unsealed."""
    await broker.seal(operator)
    request.app.state.metrics.sealed.set(1)
    return SealStatus(sealed=True)


@router.post("/v1/sys/unseal", tags=["sys"])
async def unseal(
    broker: BrokerDep, operator: OperatorDep, request: Request, body: Unseal | None = None
) -> SealStatus:
    """Open the keyring with the given root key, or with the configured key provider."""
    key: bytes | None = None
    if body is not None and body.root_key is not None:
        try:
            key = base64.b64decode(body.root_key, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInputError("root_key is not valid base64", field="root_key") from None
        if len(key) != 32:
            raise InvalidInputError("root_key must be 32 bytes, base64-encoded", field="root_key")
    try:
        await broker.unseal(operator, key)
    except DecryptionError:
        raise Problem(
            400, "unseal-failed", "Unseal failed", "this root key does not open the store's keyring"
        ) from None
    request.app.state.metrics.sealed.set(0)
    return SealStatus(sealed=False)


@router.get("/v1/sys/keys", tags=["sys"])
async def key_status(broker: BrokerDep, operator: OperatorDep) -> KeyStatus:
    """The keyring's versions (never the keys)."""
    await authorize(broker.audit, operator, Permission.SYS_KEYS, "sys:keyring")
    await broker.keys.ensure_current()  # another worker or node may have rotated it
    keyring = broker.barrier.keyring
    return KeyStatus(
        active=keyring.active.version,
        versions=[KeyVersionOut(version=k.version, created_at=k.created_at) for k in keyring.keks],
        provider=broker.keys.provider_name,
    )


@router.post("/v1/sys/keys/rotate", tags=["sys"])
async def rotate_keys(broker: BrokerDep, operator: OperatorDep, request: Request) -> RotationOut:
    """Add a key-encryption-key version and rewrap every data key under it."""
    result = await broker.rotate_keys(operator)
    request.app.state.metrics.key_rotations.inc()
    return RotationOut(kek_version=result.kek_version, rewrapped=result.rewrapped)


@router.post("/v1/sys/token-keys/rotate", tags=["sys"])
async def rotate_token_keys(broker: BrokerDep, operator: OperatorDep) -> dict[str, str]:
    """A new Ed25519 key for signing access tokens; the previous one keeps verifying live tokens."""
    return {"kid": await broker.rotate_token_keys(operator)}


@router.get("/metrics", tags=["sys"], response_class=Response)
async def metrics(broker: BrokerDep, operator: OperatorDep, request: Request) -> Response:
    """Prometheus metrics (operator token with the admin or auditor role)."""
    await authorize(broker.audit, operator, Permission.METRICS_READ, "sys:metrics")
    state = request.app.state.metrics
    state.sealed.set(1 if broker.keys.sealed else 0)
    state.audit_sink_failures.set(broker.audit.sink_failures)
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
