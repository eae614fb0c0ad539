"""Benchmarks: runnable scripts (``python -m bench.<name>``); results go to bench/results/."""
