"""The service: everything a Tether node does, behind the API and the CLI."""

from tether.broker.node import Broker, InitResult

__all__ = ["Broker", "InitResult"]
