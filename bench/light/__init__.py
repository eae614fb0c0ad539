"""Issue 13's fair benchmark: wrk (or raw asyncio sockets) with pre-built, pre-signed requests,
server CPU per operation from /proc for Tether and OpenBao alike (see bench/README.md)."""
