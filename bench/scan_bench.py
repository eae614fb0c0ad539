"""Sprawl scan benchmark: MB/s of the scan core over a corpus with 1,000 governed secrets.

Run: ``python -m bench.scan_bench [--mb 100] [--secrets 1000] [--ungoverned-mb 10]``. Prints a
table and writes bench/results/scan.json. The default corpus is 10 MB (a short run); issue 17's
figure is ``--mb 100``.

One process, in memory, what the server does for each ``POST /v1/scan`` once the values are
decrypted: build one Aho-Corasick automaton over every form of every governed value
(:class:`tether.evidence.GovernedMatcher`), then scan the corpus in 1 MiB requests-worth of text
(:func:`tether.evidence.scan_text`, line numbers and findings included). The corpus is log- and
config-like text with governed values planted in their forms (plain, base64 at each alignment,
hex, URL-encoded) every few hundred KB; every planted value must be found, or the run says so.
Measured twice: governed values only, and with detect-secrets' plugins for ungoverned secrets
too (on ``--ungoverned-mb`` of the corpus: those plugins are regular expressions run per text).
A benchmark measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import random
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tether.evidence import GovernedMatcher, GovernedValue, UngovernedDetector, as_scan_text, scan_text

RESULTS = Path(__file__).parent / "results" / "scan.json"
MIB = 1024 * 1024
PART = MIB  # one request's worth of text
_WORDS = [
    "INFO",
    "DEBUG",
    "WARN",
    "request",
    "served",
    "path",
    "/v1/items",
    "status",
    "200",
    "took",
    "ms",
    "user",
    "agent",
    "worker",
    "started",
    "config",
    "loaded",
    "retry",
    "upstream",
    "timeout",
    "cache",
    "hit",
    "miss",
    "key",
    "value",
    "region",
    "eu-west-1",
    "deploy",
    "build",
    "step",
    "finished",
    "queue",
    "job",
    "id",
    "trace",
    "span",
    "tool",
    "call",
    "result",
    "prompt",
    "memory",
    "note",
    "the",
    "a",
    "of",
    "to",
    "in",
]


def _values(count: int, rng: random.Random) -> list[GovernedValue]:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/+"
    values = []
    for i in range(count):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(16, 48))).encode()
        values.append(GovernedValue(f"bench/secret/{i:04d}", f"hmac-sha256:{i:064x}", value))
    return values


def _form(value: bytes, kind: int, rng: random.Random) -> bytes:
    if kind == 0:
        return value
    if kind == 1:
        return base64.b64encode(b"x" * rng.randint(0, 2) + value + b"tail")
    if kind == 2:
        return value.hex().encode()
    return quote(value, safe="").encode()


def _corpus(megabytes: int, values: list[GovernedValue], rng: random.Random) -> tuple[list[bytes], int]:
    """``megabytes`` of 1 MiB parts, each with governed values planted in their forms."""
    base_lines = [
        (" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "\n").encode() for _ in range(4096)
    ]
    parts, planted = [], 0
    for _ in range(megabytes):
        lines: list[bytes] = []
        size = 0
        while size < PART:
            if rng.random() < 0.0004:  # ~5 plants per MiB
                governed = rng.choice(values)
                line = b"leaked: " + _form(governed.value, rng.randint(0, 3), rng) + b"\n"
                planted += 1
            else:
                line = rng.choice(base_lines)
            lines.append(line)
            size += len(line)
        parts.append(b"".join(lines))
    return parts, planted


def _scan(
    parts: list[bytes], matcher: GovernedMatcher, detector: UngovernedDetector | None
) -> tuple[float, int]:
    found = 0
    started = time.perf_counter()
    for part in parts:
        result = scan_text(as_scan_text(part), matcher, detector, limit=100_000)
        found += len(result.governed)
    return time.perf_counter() - started, found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mb", type=int, default=10, help="corpus size in MiB (issue 17: 100)")
    parser.add_argument("--secrets", type=int, default=1000, help="governed secrets")
    parser.add_argument("--ungoverned-mb", type=int, default=5, help="MiB scanned with detect-secrets too")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--no-write", action="store_true", help="print only; do not write scan.json")
    args = parser.parse_args(argv)
    if args.mb < 1 or args.secrets < 1 or args.ungoverned_mb < 0:
        parser.error("--mb and --secrets must be positive, --ungoverned-mb 0 or more")
    rng = random.Random(args.seed)
    values = _values(args.secrets, rng)
    parts, planted = _corpus(args.mb, values, rng)
    corpus_bytes = sum(len(part) for part in parts)

    started = time.perf_counter()
    matcher = GovernedMatcher(values)
    build_seconds = time.perf_counter() - started
    seconds, found = _scan(parts, matcher, None)
    sample = parts[: min(args.ungoverned_mb, len(parts))]
    both_seconds, _ = _scan(sample, matcher, UngovernedDetector()) if sample else (0.0, 0)
    matcher.close()
    sample_bytes = sum(len(part) for part in sample)

    results = {
        "corpus_mb": round(corpus_bytes / 1e6, 1),
        "governed_secrets": args.secrets,
        "automaton_build_seconds": round(build_seconds, 3),
        "planted": planted,
        "found": found,
        "all_planted_found": found >= planted,
        "governed_only": {"seconds": round(seconds, 3), "mb_per_s": round(corpus_bytes / 1e6 / seconds, 1)},
        "with_ungoverned": {
            "corpus_mb": round(sample_bytes / 1e6, 1),
            "seconds": round(both_seconds, 3),
            "mb_per_s": round(sample_bytes / 1e6 / both_seconds, 1) if both_seconds else None,
        },
    }
    report = {
        "benchmark": "scan",
        "command": "python -m bench.scan_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "versions": {name: metadata.version(name) for name in ("pyahocorasick", "detect-secrets")},
        "results": results,
    }
    governed_rate = results["governed_only"]["mb_per_s"]
    print(f"corpus {results['corpus_mb']} MB, {args.secrets} governed secrets")
    print(f"automaton built in {build_seconds:.2f} s")
    print(f"governed only:        {governed_rate:>7} MB/s ({found}/{planted} planted found)")
    if sample:
        both = results["with_ungoverned"]
        print(f"with ungoverned too:  {both['mb_per_s']:>7} MB/s (on {both['corpus_mb']} MB)")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS}")
    return report


if __name__ == "__main__":
    main()
