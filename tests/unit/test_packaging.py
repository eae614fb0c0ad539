"""Packaging conventions: the SDK imports without the server extra, the CLI names the extra it
needs, one version string, ``python -m tether``."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import version

import pytest

import tether
from tether._extras import SERVER_MODULES, missing_extra_message

# Hide every module of the server extra, as in a `pip install tether` (SDK only) environment.
_BLOCK = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in sorted(SERVER_MODULES))


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sdk_imports_without_the_server_extra() -> None:
    result = _run(
        """
        import tether.sdk
        server = {'fastapi', 'sqlalchemy', 'cedarpy'}
        loaded = sorted(m for m, v in sys.modules.items() if v is not None and m.split('.')[0] in server)
        print(tether.sdk.Agent.__name__, loaded)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Agent []"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["server", "--data-dir", "x"], "error: `tether server` needs the 'server' extra"),
        (["--help"], "error: the tether command line needs the 'server' extra"),
    ],
)
def test_cli_without_the_server_extra_says_which_extra_in_one_line(argv: list[str], expected: str) -> None:
    result = _run("import tether.__main__; tether.__main__.main(sys.argv[1:])", *argv)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert lines[0].startswith(expected)
    assert "pip install 'tether[server]'" in lines[0]


def test_version_without_the_server_extra() -> None:
    result = _run("import tether.__main__; tether.__main__.main(['--version'])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tether {version('tether')} (SDK only: no server extra)"


def test_missing_extra_message_only_for_server_modules() -> None:
    assert missing_extra_message(ModuleNotFoundError("x", name="not_ours")) is None
    message = missing_extra_message(ModuleNotFoundError("x", name="uvicorn.config"), "demo")
    assert (
        message
        == "`tether demo` needs the 'server' extra (uvicorn is not installed): pip install 'tether[server]'"
    )


def test_one_version_string_from_the_package_metadata() -> None:
    assert tether.__version__ == version("tether")


def test_python_dash_m_tether_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether", "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tether {version('tether')}"
