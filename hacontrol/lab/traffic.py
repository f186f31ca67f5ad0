"""The lab's client load and status watcher, and the pure analysis of what they recorded.

Two bounded loops run *inside* a namespace as ``python -m hacontrol.lab.traffic``:

- ``load``: HTTP GETs to the VIP, one new connection each, started every ``--interval`` seconds
  (several may be in flight, so a hung request does not hide the others), at most ``--count``
  requests and ``--duration`` seconds; one JSON line per finished request on stdout:
  ``{"t": start (monotonic s), "dt": latency, "ok": bool, "server": "rs1" | null, "error": ...}``.
- ``watch``: GET the daemon's ``/v1/status`` every ``--interval`` seconds for at most
  ``--duration`` seconds; one JSON line per poll: ``{"t": ..., "status": {...}}`` or ``"error"``.

Both stop early on SIGTERM/SIGINT. The monotonic clock is shared by all namespaces (there is no
time namespace here), so these timestamps compare directly with the lab's own event times.

``Run`` starts such a loop in a namespace and collects its lines on a thread; ``distribution``,
``failures`` and ``outage`` are pure functions over the recorded requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hacontrol.lab.netns import Ns

MAX_COUNT = 100_000
MAX_DURATION = 900.0


@dataclass(frozen=True)
class Request:
    """One finished client request."""

    t: float  # start, monotonic seconds
    dt: float  # latency (or time to failure)
    ok: bool
    server: str | None = None  # the name the real server answered with
    error: str | None = None

    @property
    def end(self) -> float:
        return self.t + self.dt


# ---------------------------------------------------------------- pure analysis


def distribution(reqs: Iterable[Request]) -> dict[str, int]:
    """Answers per server name, sorted by name."""
    c = Counter(r.server for r in reqs if r.ok and r.server)
    return dict(sorted(c.items()))


def errors(reqs: Iterable[Request]) -> dict[str, int]:
    """Failed requests per error (``timeout``, ``ConnectionRefusedError``, ``status 503``...)."""
    c = Counter(r.error or "?" for r in reqs if not r.ok)
    return dict(sorted(c.items()))


def between(reqs: Iterable[Request], start: float, end: float = float("inf")) -> list[Request]:
    """Requests started in [start, end)."""
    return [r for r in reqs if start <= r.t < end]


def failures(reqs: Iterable[Request], start: float = 0.0, end: float = float("inf")) -> int:
    return sum(1 for r in between(reqs, start, end) if not r.ok)


def outage(reqs: Sequence[Request], start: float, end: float = float("inf")) -> float:
    """The longest gap between two consecutive successful answers around [start, end).

    Counts the last success finished before ``start`` and every success finished up to the first
    one at or after ``end``, so an outage spanning the window's edges is measured whole. A gap is
    measured between answer times (request end), which is what a client perceives.
    """
    ends = sorted(r.end for r in reqs if r.ok)
    before = [e for e in ends if e < start]
    inside = [e for e in ends if start <= e < end]
    after = [e for e in ends if e >= end]
    points = before[-1:] + inside + after[:1]
    if len(points) < 2:
        return float("inf") if reqs else 0.0
    return max(b - a for a, b in itertools.pairwise(points))


def first_answer(reqs: Iterable[Request], server: str, after: float) -> float | None:
    """When ``server`` first answered a request started at or after ``after``."""
    ts = [r.end for r in reqs if r.ok and r.server == server and r.t >= after]
    return min(ts) if ts else None


def last_answer(reqs: Iterable[Request], server: str, before: float) -> float | None:
    ts = [r.end for r in reqs if r.ok and r.server == server and r.t < before]
    return max(ts) if ts else None


def request_from(d: dict[str, Any]) -> Request | None:
    """A ``Request`` from one line of the load loop, or None if it is not one."""
    try:
        return Request(
            float(d["t"]), float(d["dt"]), bool(d["ok"]), d.get("server"), d.get("error")
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


# ---------------------------------------------------------------- the loops (inside a namespace)


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def _one_request(host: str, port: int, limit: float) -> Request:
    t0 = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(4096)
            while chunk := await reader.read(4096):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
        ok = status == b"200"
        name = body.decode(errors="replace").strip() or None
        return Request(
            t0,
            time.monotonic() - t0,
            ok,
            name if ok else None,
            None if ok else f"status {status.decode(errors='replace') or '?'}",
        )
    except TimeoutError:
        return Request(t0, time.monotonic() - t0, False, None, "timeout")
    except OSError as e:
        return Request(t0, time.monotonic() - t0, False, None, type(e).__name__)
    finally:
        if writer is not None:
            writer.close()


async def load(
    target: str,
    count: int,
    interval: float,
    limit: float,
    duration: float,
    max_inflight: int,
    stop: asyncio.Event,
) -> None:
    host, port = _split(target)
    count, duration = min(count, MAX_COUNT), min(duration, MAX_DURATION)
    sem = asyncio.Semaphore(max_inflight)
    tasks: set[asyncio.Task[None]] = set()

    async def fire() -> None:
        try:
            r = await _one_request(host, port, limit)
            print(json.dumps(r.__dict__), flush=True)
        finally:
            sem.release()

    deadline = time.monotonic() + duration
    nxt = time.monotonic()
    for _ in range(count):
        if stop.is_set() or time.monotonic() >= deadline:
            break
        await sem.acquire()
        task = asyncio.create_task(fire())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        else:
            nxt = time.monotonic()  # behind schedule (a stalled machine): do not burst
    if tasks:
        await asyncio.wait(tasks)


async def watch(url: str, interval: float, duration: float, stop: asyncio.Event) -> None:
    import aiohttp

    deadline = time.monotonic() + min(duration, MAX_DURATION)
    tmo = aiohttp.ClientTimeout(total=max(interval, 1.0))
    async with aiohttp.ClientSession(timeout=tmo) as session:
        while not stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            line: dict[str, Any] = {"t": t0}
            try:
                async with session.get(url) as resp:
                    line["status"] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                line["error"] = f"{type(e).__name__}: {e}"
            print(json.dumps(line), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, t0 + interval - time.monotonic()))


async def _amain(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.mode == "load":
        await load(
            args.target,
            args.count,
            args.interval,
            args.timeout,
            args.duration,
            args.max_inflight,
            stop,
        )
    else:
        await watch(args.url, args.interval, args.duration, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hacontrol-lab-traffic")
    sub = p.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("load", help="bounded HTTP client load")
    lp.add_argument("--target", required=True, help="address:port")
    lp.add_argument("--count", type=int, default=30)
    lp.add_argument("--interval", type=float, default=0.02)
    lp.add_argument("--timeout", type=float, default=1.0)
    lp.add_argument("--duration", type=float, default=60.0)
    lp.add_argument("--max-inflight", type=int, default=50)
    wp = sub.add_parser("watch", help="poll the daemon's status API")
    wp.add_argument("--url", required=True)
    wp.add_argument("--interval", type=float, default=0.1)
    wp.add_argument("--duration", type=float, default=600.0)
    args = p.parse_args(argv)
    asyncio.run(_amain(args))
    return 0


# ---------------------------------------------------------------- the lab side


class Run:
    """One loop running in a namespace; its JSON lines are collected on a thread.

    ``registry`` (e.g. ``Cluster.runs``) gets the run, so cleanup can stop every loop."""

    def __init__(self, registry: list[Run], ns: Ns, *args: str) -> None:
        registry.append(self)  # so whoever owns the registry can stop every loop
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.proc = ns.popen(
            sys.executable,
            "-m",
            "hacontrol.lab.traffic",
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                with self._lock:
                    self.lines.append(d)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def wait(self, timeout: float) -> None:
        """Wait for the loop to end by itself (its count or duration)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        self._thread.join(timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._thread.join(timeout=5)


class Load(Run):
    """Client load to ``target`` from ``ns`` (see ``load``)."""

    def __init__(
        self,
        registry: list[Run],
        ns: Ns,
        target: str,
        count: int,
        interval: float = 0.02,
        timeout: float = 1.0,
        duration: float = 60.0,
    ) -> None:
        super().__init__(
            registry,
            ns,
            "load",
            "--target",
            target,
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--timeout",
            str(timeout),
            "--duration",
            str(duration),
        )

    def requests(self) -> list[Request]:
        out = [request_from(d) for d in self.snapshot()]
        return sorted((r for r in out if r is not None), key=lambda r: r.t)


if __name__ == "__main__":
    sys.exit(main())
