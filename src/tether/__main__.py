"""``python -m tether``: the ``tether`` command line."""

from tether.cli.main import main

if __name__ == "__main__":
    main()
