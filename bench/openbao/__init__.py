"""Side-by-side benchmark: Tether and OpenBao on one machine, in one run, like for like.

Both servers run as subprocesses on 127.0.0.1 with persistence and audit on (Tether: SQLite
WAL with its hash-chained audit log; OpenBao: raft storage with a file audit device), loaded by
several client processes (:mod:`bench.openbao.load`). ``python -m bench.openbao`` writes
bench/results/openbao.json; :mod:`bench.compare` folds it into latest.json and latest.md.
"""
