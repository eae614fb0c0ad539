"""A loopback upstream for the egress measure: ``python -m bench.light.upstream PORT``.

Answers every request with the same ~200-byte JSON body (HTTP/1.1, keep-alive), reading and
discarding any request body. Raw asyncio so the upstream's own cost is small and identical for
the direct call and the call through Tether's egress path.
"""

from __future__ import annotations

import asyncio
import json
import sys

# The same answer as bench/egress_bench.py's upstream.
ANSWER = json.dumps({"id": 1, "name": "item", "tags": ["a", "b", "c"], "text": "x" * 120}).encode()

RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(ANSWER)).encode()
    + b"\r\n\r\n"
    + ANSWER
)


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:" and int(line[15:]):
                    await reader.readexactly(int(line[15:]))
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(answer, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
