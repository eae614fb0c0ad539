"""``python -m bench.openbao``: the side-by-side run (see :mod:`bench.openbao.run`)."""

from bench.openbao.run import main

if __name__ == "__main__":
    main()
