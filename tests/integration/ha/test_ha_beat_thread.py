"""The heartbeat sender, thread and process, on real UDP sockets (loopback): a real HaRunner whose
event loop is deliberately blocked (a ``time.sleep`` callback on the loop, in-process) keeps
sending its heartbeats during the block while the loop is recent, and stops once the loop has been
silent longer than ``stall_factor x interval``; it resumes when the loop runs again, every copy
with a unique increasing sequence number whichever thread sent it; ``stop`` joins the thread and
nothing is sent after it; a silent machine (a fault drill) sends nothing from the thread either.
The same block with the loop-driven sender (the baseline) lets nothing out.

A plain UDP socket is the peer: it never answers, so the runner is a lone node (active once its
listen ends); the kernel's receive timestamp (SO_TIMESTAMPNS, wall clock) places each packet
against the block's wall-clock bounds. No timing asserts beyond the rule itself (generous slack: a
send is stamped by the kernel within microseconds on loopback). The receive side: a backup whose
loop is held past the dead interval reads the heartbeats queued meanwhile before its deadline tick,
and never takes over from the live active."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from looppair import loopback_pair

from hacontrol.clock import loop_clock
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.notify import CommandNotifier
from hacontrol.ha.runner import HaRunner
from hacontrol.ha.vip import VipGroup
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint, HAConfig

KEY = b"beat thread test key"
INTERVAL = 0.1
STALL = 5.0  # the window: 0.5 s of a silent loop
BLOCK = 1.5
SLACK = 0.3
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


@dataclass
class Sink:
    """The peer's socket: every heartbeat received, with the kernel's wall-clock timestamp."""

    sock: socket.socket
    got: list[tuple[float, pk.Message]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            ts = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    ts = sec + nsec / 1e9
            with self.cond:
                self.got.append((ts, pk.decode(data, KEY)))
                self.cond.notify_all()

    async def wait_count(self, n: int, within: float = 20.0) -> None:
        """Until ``n`` heartbeats have arrived (waited on a worker: the event loop runs on)."""

        def wait() -> bool:
            with self.cond:
                return self.cond.wait_for(lambda: len(self.got) >= n, within)

        assert await asyncio.to_thread(wait), len(self.got)

    def between(self, t0: float, t1: float) -> list[pk.Message]:
        with self.cond:
            return [m for ts, m in self.got if t0 < ts < t1]


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    k = Sink(s)
    t = threading.Thread(target=k.run, name="sink", daemon=True)
    t.start()
    try:
        yield k
    finally:
        k.stop.set()
        t.join(5.0)
        s.close()


def make_runner(tmp_path: Path, peer_port: int, beat: str) -> HaRunner:
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind(("127.0.0.1", 0))
    lo = ipaddress.ip_address("127.0.0.1")
    cfg = HAConfig(
        bind=Endpoint(lo, own.getsockname()[1]), peers=(Endpoint(lo, peer_port),),
        secret_file="-", priority=100, interval=INTERVAL, dead_after=3, lease=None,
    )  # fmt: skip
    return HaRunner(
        cfg, "dir-a", KEY, clock=loop_clock(), metrics=Metrics(), vips=VipGroup(()),
        notifier=CommandNotifier((), node="dir-a"), health_summary=lambda: [("web", 1, 1)],
        digest="cd" * 32, state_dir=str(tmp_path), sock=own, beat=beat,
        stall_factor=STALL,
    )  # fmt: skip


async def block_loop(r: HaRunner, seconds: float) -> tuple[float, float]:
    """Block the event loop for ``seconds`` right after a machine step (the thread's content is
    then fresh); the wall-clock bounds of the block."""
    bounds: list[float] = []
    done = asyncio.Event()

    def hold() -> None:
        r.feed(ft.Tick(r.clock()))
        bounds.append(time.time())
        time.sleep(seconds)  # the big work: nothing else runs on this loop meanwhile
        bounds.append(time.time())
        done.set()

    asyncio.get_running_loop().call_soon(hold)
    await done.wait()
    return bounds[0], bounds[1]


@pytest.mark.parametrize("beat", ["thread", "process"])
def test_sender_speaks_through_a_blocked_loop_then_pauses(
    tmp_path: Path, sink: Sink, beat: str
) -> None:
    async def main() -> None:
        r = make_runner(tmp_path, sink.sock.getsockname()[1], beat)
        await r.start()
        try:
            await r.wait_until(lambda: r.role == "active", 10.0)
            n0 = len(sink.got)
            await sink.wait_count(n0 + 5)
            b0, b1 = await block_loop(r, BLOCK)
            window = STALL * INTERVAL
            during = sink.between(b0, b0 + window)
            late = sink.between(b0 + window + SLACK, b1)
            assert len(during) >= 3, f"{len(during)} heartbeats while the loop was blocked"
            assert all(m.role == pk.WireRole.ACTIVE for m in during)
            assert late == [], "the thread kept a silent loop alive"
            st = r.status()["beat"]
            assert st["sender"] == beat and st["alive"] and st["error"] is None
            n1 = len(sink.got)
            await sink.wait_count(n1 + 3)  # the loop runs again: the thread resumes
            await r.wait_until(lambda: not r.status()["beat"]["paused"], 10.0)
            pauses = r.metrics.registry.get_sample_value(
                "hacontrol_ha_beat_pauses_total", {"reason": "loop_stalled"}
            )
            assert pauses == 1
        finally:
            await r.stop(graceful=False)
        assert r.speaker.sender is not None and not r.speaker.sender.alive
        after = time.time()
        await asyncio.sleep(5 * INTERVAL)
        assert sink.between(after, time.time()) == [], "sent after stop"
        seqs = [m.seq for _, m in sink.got]
        assert seqs == sorted(set(seqs)), "sequence numbers not unique and increasing"
        assert len({m.epoch for _, m in sink.got}) == 1

    asyncio.run(main())


@pytest.mark.parametrize("beat", ["thread", "process"])
def test_sender_says_nothing_while_the_machine_is_silent(
    tmp_path: Path, sink: Sink, beat: str
) -> None:
    """The loop-driven rules hold for the thread: a fault drill (silent, "behave as dead") is
    published as nothing to send, so no heartbeat leaves until it ends; then they resume."""

    async def main() -> None:
        r = make_runner(tmp_path, sink.sock.getsockname()[1], beat)
        await r.start()
        try:
            await r.wait_until(lambda: r.role == "active", 10.0)
            await sink.wait_count(len(sink.got) + 3)
            r.feed(ft.DrillFault(r.clock(), 1.0))
            t0 = time.time()
            await r.wait_until(lambda: not r.fsm.silent, 10.0)
            t1 = time.time()
            assert t1 - t0 >= 0.5
            assert sink.between(t0 + 0.05, t1) == [], "a heartbeat while silent"
            await sink.wait_count(len(sink.got) + 3)  # the drill is over: heard again
            assert r.status()["beat"]["alive"]
        finally:
            await r.stop(graceful=False)

    asyncio.run(main())


def test_loop_driven_sender_is_silent_while_blocked(tmp_path: Path, sink: Sink) -> None:
    """The baseline: the same block with the loop sending (virtual-time tests' mode)."""

    async def main() -> None:
        r = make_runner(tmp_path, sink.sock.getsockname()[1], "loop")
        await r.start()
        try:
            await r.wait_until(lambda: r.role == "active", 10.0)
            await sink.wait_count(len(sink.got) + 3)
            b0, b1 = await block_loop(r, 0.6)
            assert sink.between(b0 + 0.05, b1) == []
            assert r.status()["beat"] == {"sender": "loop"}
        finally:
            await r.stop(graceful=False)

    asyncio.run(main())


def test_backup_blocked_past_the_dead_interval_reads_queued_heartbeats_first(
    tmp_path: Path,
) -> None:
    """The receive side: the backup's loop is held longer than the dead interval (0.3 s) but
    shorter than a stall (0.5 s here), so only the order of the loop's work protects it: the
    heartbeats queued meanwhile must be read before the deadline tick runs. Five holds; the
    backup never becomes active and the active never leaves."""
    with loopback_pair(tmp_path, KEY, interval=INTERVAL, dead_after=3, stall=STALL) as pair:
        runners, loops, _ = pair
        a, b = runners["a"], runners["b"]

        async def elected() -> None:
            await b.wait_until(lambda: (a.role, b.role) == ("active", "backup"), 20.0)
            await b.wait_until(lambda: b.fsm.peer_alive(b.clock()), 20.0)

        loops["b"].run(elected())
        hold = 0.45  # > dead interval 0.3, < the stall window 0.5
        for _ in range(5):
            loops["b"].run(block_loop(b, hold))
            loops["b"].run(b.wait_until(lambda: b.fsm.peer_alive(b.clock()), 10.0))
        assert (a.role, b.role) == ("active", "backup")
        took = b.metrics.registry.get_sample_value(
            "hacontrol_ha_transitions_total", {"from_role": "backup", "to_role": "active"}
        )
        assert took is None, "the backup took over from a live active"
