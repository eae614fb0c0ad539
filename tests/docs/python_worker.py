"""Runs one Markdown file's Python blocks in one namespace, as a user pasting them into one session.

Started by the docs check as ``python python_worker.py``; reads one JSON request per line on stdin
(``{"code", "filename", "line"}``) and answers one JSON line per request on its original stdout
(``{"ok", "output", "error"}``). The block's code is compiled so that tracebacks name the Markdown
file and its line numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback


def main() -> None:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    namespace: dict[str, object] = {"__name__": "__main__"}
    for request_line in sys.stdin:
        request = json.loads(request_line)
        # Pad with newlines so that tracebacks point at the block's lines in the Markdown file.
        source = "\n" * (request["line"] - 1) + request["code"]
        captured = io.StringIO()
        ok, error = True, ""
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            try:
                exec(compile(source, request["filename"], "exec"), namespace)
            except BaseException:
                ok, error = False, traceback.format_exc()
        answers.write(json.dumps({"ok": ok, "output": captured.getvalue(), "error": error}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
