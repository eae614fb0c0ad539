"""`make bench`: run every benchmark and write bench/results/. Benchmarks measure; they never assert."""

from __future__ import annotations

import asyncio
import os

from bench import audit_bench, egress_bench, governed_bench, identity_bench, policy_bench


def main() -> None:
    args = []
    if dsn := os.environ.get("TETHER_TEST_PG_DSN"):
        args += ["--pg-dsn", dsn]
    asyncio.run(audit_bench.main(args))
    print()
    asyncio.run(identity_bench.main([]))
    print()
    policy_bench.main([])
    print()
    asyncio.run(egress_bench.main([]))
    print()
    asyncio.run(governed_bench.main([]))


if __name__ == "__main__":
    main()
