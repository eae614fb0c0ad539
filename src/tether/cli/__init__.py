"""The ``tether`` command: thin over the broker (node commands) and the HTTP API (the rest).

Parse, call, render: no business rules live here. Output is for people by default and
for machines with ``--json``; every failure is one ``error: ...`` line on stderr.
"""
