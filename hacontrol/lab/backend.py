"""A tiny real server for the lab, tests and benchmarks: HTTP that answers with its own name.

Run as ``python -m hacontrol.lab.backend --listen 192.0.2.2:80 --name rs1 [--count-file F]``.
Every answered request increments a counter written to ``--count-file`` (so tests count what each
server itself received). SIGUSR1 toggles "hang" mode: connections are accepted but never answered
(a stuck server); SIGTERM exits. Each connection answers one request then closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys


class Backend:
    def __init__(self, name: str, count_file: str | None) -> None:
        self.name = name
        self.count_file = count_file
        self.count = 0
        self.hang = False
        self._stuck: list[asyncio.StreamWriter] = []

    def write_count(self) -> None:
        if self.count_file:
            tmp = f"{self.count_file}.tmp"
            with open(tmp, "w") as f:
                f.write(str(self.count))
            os.replace(tmp, self.count_file)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.hang:
            self._stuck.append(writer)  # keep it open, never answer
            return
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        if self.hang:
            self._stuck.append(writer)
            return
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
        status = b"200 OK"
        body = f"{self.name}\n".encode()
        if path.startswith(b"/status/"):
            code = path.split(b"/")[2][:3]
            status = code + b" X"
        self.count += 1
        self.write_count()
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    def toggle_hang(self) -> None:
        self.hang = not self.hang
        print(f"{self.name}: hang={self.hang}", flush=True)


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def amain(args: argparse.Namespace) -> None:
    b = Backend(args.name, args.count_file)
    b.write_count()
    host, port = _split(args.listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = await asyncio.start_server(
        b.handle, host, port, family=family, reuse_address=True, backlog=1024
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, b.toggle_hang)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"{args.name}: listening on {args.listen}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hacontrol-backend")
    p.add_argument("--listen", required=True, help="address:port")
    p.add_argument("--name", required=True)
    p.add_argument("--count-file")
    args = p.parse_args(argv)
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
