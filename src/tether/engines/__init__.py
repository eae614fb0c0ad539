"""Secret engines: what hands out a credential for a ``dynamic`` grant, behind one protocol."""

from tether.engines.base import EngineRegistry, IssuedCredential, LeaseRequest, RenewableEngine, SecretEngine
from tether.engines.static import StaticEngine

__all__ = [
    "EngineRegistry",
    "IssuedCredential",
    "LeaseRequest",
    "RenewableEngine",
    "SecretEngine",
    "StaticEngine",
]
