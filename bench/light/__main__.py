"""``python -m bench.light [--quick]``: the light-generator benchmark (see :mod:`bench.light.run`)."""

from bench.light.run import main

if __name__ == "__main__":
    main()
