"""The chaos soak's processes inside namespaces: an echo real server and the long-connection client.

Run by bench/chaos_soak.py as ``python bench/chaos_io.py MODE ...`` inside a namespace:

- ``echo --listen ADDR:PORT --name rs1``: a TCP server that greets every connection with its name
  (one line) and then echoes every byte it receives, until the client closes.
- ``hold --target VIP:PORT --conns N --interval S --timeout S --duration S``: N long-lived
  connections through the VIP; each sends one byte every ``--interval`` seconds and expects it
  back within ``--timeout``. A connection that fails (no echo in time, EOF, an error) is reported
  broken, closed and reopened after a short pause; an open that fails (no greeting within the
  timeout) is reported too. One JSON line per event on stdout:
  ``{"t": monotonic s, "conn": i, "ev": "open" | "broken" | "open_failed", "server": name,
  "error": ..., "age": seconds the broken connection had lived}``.

Everything is bounded by ``--duration`` (at most 1,800 s) and stops early on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

MAX_DURATION = 1800.0
PAUSE = 0.2  # s before reopening a broken connection


def emit(**kw: Any) -> None:
    print(json.dumps({"t": time.monotonic(), **kw}), flush=True)


# ---------------------------------------------------------------- the echo server


async def serve_echo(listen: str, name: str, stop: asyncio.Event) -> None:
    host, _, port = listen.rpartition(":")

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(f"{name}\n".encode())
            await w.drain()
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, host, int(port), reuse_address=True, backlog=256)
    print(f"{name}: echo listening on {listen}", flush=True)
    async with server:
        await stop.wait()


# ---------------------------------------------------------------- the long-connection client


async def _open(host: str, port: int, limit: float) -> tuple[Any, Any, str]:
    async with asyncio.timeout(limit):
        r, w = await asyncio.open_connection(host, port)
        try:
            greeting = await r.readline()
        except BaseException:
            w.close()
            raise
    if not greeting:
        w.close()
        raise ConnectionResetError("closed before the greeting")
    return r, w, greeting.decode(errors="replace").strip()


async def hold_one(i: int, host: str, port: int, interval: float, limit: float,
                   deadline: float, stop: asyncio.Event) -> None:  # fmt: skip
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            r, w, server = await _open(host, port, limit)
        except (OSError, TimeoutError) as e:
            emit(conn=i, ev="open_failed", error=type(e).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PAUSE * 5)
            continue
        opened = time.monotonic()
        emit(conn=i, ev="open", server=server)
        error = None
        try:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if stop.is_set():
                    break
                n += 1
                byte = bytes([65 + n % 26])
                w.write(byte)
                async with asyncio.timeout(limit):
                    await w.drain()
                    got = await r.readexactly(1)
                if got != byte:
                    error = f"echo {got!r} for {byte!r}"
                    break
        except TimeoutError:
            error = "timeout"
        except (OSError, asyncio.IncompleteReadError) as e:
            error = type(e).__name__
        finally:
            w.close()
        if error is not None:
            emit(conn=i, ev="broken", server=server, error=error,
                 age=round(time.monotonic() - opened, 3))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PAUSE)


async def hold(args: argparse.Namespace, stop: asyncio.Event) -> None:
    host, _, port = args.target.rpartition(":")
    deadline = time.monotonic() + min(args.duration, MAX_DURATION)
    await asyncio.gather(*(
        hold_one(i, host, int(port), args.interval, args.timeout, deadline, stop)
        for i in range(args.conns)
    ))  # fmt: skip


async def amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.mode == "echo":
        await serve_echo(args.listen, args.name, stop)
    else:
        await hold(args, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chaos_io")
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("echo")
    e.add_argument("--listen", required=True)
    e.add_argument("--name", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--target", required=True)
    h.add_argument("--conns", type=int, default=6)
    h.add_argument("--interval", type=float, default=1.0)
    h.add_argument("--timeout", type=float, default=2.0)
    h.add_argument("--duration", type=float, default=60.0)
    asyncio.run(amain(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
