"""Two real HaRunners on loopback UDP, each on an event loop in a thread of its own (one
director each), the periodic heartbeats sent by their sender processes: the in-process pair of
the heartbeat sender and read-gap tests, which hold one runner's loop on purpose (no daemon, no
namespace: the loops are the subject). ``loopback_pair`` starts them (a preferred, priority 150;
b, 100; no VIPs) and stops and closes everything on exit, also after a failure."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

from hacontrol.clock import loop_clock
from hacontrol.ha.notify import CommandNotifier
from hacontrol.ha.runner import HaRunner
from hacontrol.ha.vip import VipGroup
from hacontrol.lab.netns import LoopThread
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint, HAConfig

Pair = tuple[dict[str, HaRunner], dict[str, LoopThread], dict[str, int]]


@contextlib.contextmanager
def loopback_pair(
    tmp_path: Path, key: bytes, *, interval: float, dead_after: int, stall: float
) -> Iterator[Pair]:
    """(runners, their loops, their UDP ports) by name ``a`` / ``b``."""
    lo = ipaddress.ip_address("127.0.0.1")
    socks = {n: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for n in ("a", "b")}
    for s in socks.values():
        s.bind(("127.0.0.1", 0))
    port = {n: s.getsockname()[1] for n, s in socks.items()}
    loops = {n: LoopThread() for n in ("a", "b")}
    runners: dict[str, HaRunner] = {}
    try:
        for n, prio, other in (("a", 150, "b"), ("b", 100, "a")):
            cfg = HAConfig(
                bind=Endpoint(lo, port[n]), peers=(Endpoint(lo, port[other]),), secret_file="-",
                priority=prio, preempt=False, interval=interval, dead_after=dead_after,
                lease=None,
            )  # fmt: skip

            async def make(cfg: HAConfig = cfg, n: str = n) -> HaRunner:
                r = HaRunner(
                    cfg, f"dir-{n}", key, clock=loop_clock(), metrics=Metrics(),
                    vips=VipGroup(()), notifier=CommandNotifier((), node=n),
                    health_summary=lambda: [("web", 1, 1)], digest="cd" * 32,
                    state_dir=str(tmp_path / n), sock=socks[n], beat="process",
                    stall_factor=stall,
                )  # fmt: skip
                await r.start()
                return r

            runners[n] = loops[n].run(make())
        yield runners, loops, port
    finally:
        for n, r in runners.items():
            loops[n].run(r.stop(graceful=False))
        for lp in loops.values():
            lp.close()
        for s in socks.values():
            s.close()
