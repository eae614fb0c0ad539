"""``python -m tether`` and the ``tether`` command: the command line, or one clear line saying which
extra to install when only the SDK is (``pip install tether`` has no server and no CLI)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def _command(argv: list[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; without the server extra, say which extra it needs and exit 1."""
    try:
        from tether.cli.main import main as cli_main
    except ModuleNotFoundError as exc:
        from tether._extras import missing_extra_message

        args = sys.argv[1:] if argv is None else argv
        if args == ["--version"]:  # what is installed, even without the CLI
            from tether import __version__

            print(f"tether {__version__} (SDK only: no server extra)")
            sys.exit(0)
        message = missing_extra_message(exc, _command(args))
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    cli_main(argv)


if __name__ == "__main__":
    main()
