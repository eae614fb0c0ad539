"""The security suites run against the same real brokers as the integration tests."""

from tests.integration.conftest import admin, broker, root_token  # noqa: F401 - fixtures shared by name
