"""One limit on a secret value's size (max_secret_bytes), one message, from the server and the CLI."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tether.cli.common import MAX_VALUE_READ_BYTES, read_value
from tether.cli.output import CommandError
from tether.domain.secrets import DEFAULT_MAX_SECRET_BYTES, MAX_SECRET_BYTES_CAP, value_too_large


async def test_the_server_refuses_a_value_over_its_limit_with_the_one_message(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    size = DEFAULT_MAX_SECRET_BYTES + 1
    answer = await client.put(
        "/v1/secrets/prod/too/big", json={"value": "x" * size, "sensitivity": "internal"}, headers=admin
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == value_too_large(size, DEFAULT_MAX_SECRET_BYTES)
    assert "x" * 32 not in answer.text


def test_the_cli_reads_no_more_than_the_cap_and_says_the_same(tmp_path: Path) -> None:
    assert MAX_VALUE_READ_BYTES == MAX_SECRET_BYTES_CAP
    big = tmp_path / "value.txt"
    big.write_bytes(b"y" * (MAX_SECRET_BYTES_CAP + 10))
    with pytest.raises(CommandError) as refused:
        read_value(big, use_stdin=False)
    assert str(refused.value) == f"{big}: {value_too_large(None, MAX_SECRET_BYTES_CAP)}"
    at_cap = tmp_path / "at-cap.txt"
    at_cap.write_bytes(b"z" * MAX_SECRET_BYTES_CAP)
    assert read_value(at_cap, use_stdin=False) == "z" * MAX_SECRET_BYTES_CAP
