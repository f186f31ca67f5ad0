"""hacontrol.systemd: the watchdog period from the environment, the notification socket, pings
from the event loop (a blocked loop sends none), the STATUS= line sent on change at most once per
period, and a daemon in this process telling a fake NOTIFY_SOCKET its role and table size."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hacontrol.clock import run_virtual
from hacontrol.config import load
from hacontrol.daemon import Daemon
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.systemd import SystemdLink, notify, status_line, watchdog_period

PID = 4242


@pytest.mark.parametrize(
    ("env", "period"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(PID)}, 10.0),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # inherited: not ours
        ({"WATCHDOG_USEC": "250000"}, 0.25),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "10s"}, None),
        ({"WATCHDOG_PID": str(PID)}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], period: float | None) -> None:
    assert watchdog_period(env, PID) == period


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.settimeout(10)
        yield path, s


def test_notify_path_abstract_and_none(notify_socket: tuple[str, socket.socket]) -> None:
    path, s = notify_socket
    assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": path}) is True
    assert s.recv(100) == b"WATCHDOG=1"
    name = f"hacontrol-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as a:
        a.bind("\0" + name)
        a.settimeout(10)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert a.recv(100) == b"READY=1"
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": path + ".gone"}) is False


def test_status_line() -> None:
    assert status_line("active", 3, 9, 0) == "active, 3 services, 9 destinations, 0 apply errors"


class Recorder:
    """A ``send`` that keeps (clock reading, message)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str]] = []
        self.arrived = asyncio.Event()

    def __call__(self, message: str) -> bool:
        self.sent.append((self.clock(), message))
        self.arrived.set()
        return True

    async def next(self) -> float:
        """Wait for the next message (bounded by the caller's timeout); its time."""
        self.arrived.clear()
        await self.arrived.wait()
        return self.sent[-1][0]

    def at(self, message: str) -> list[float]:
        return [t for t, m in self.sent if m == message]


def test_pings_every_half_period_on_the_loops_clock() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        rec = Recorder(loop.time)
        link = SystemdLink(lambda: "standalone", watchdog=10.0, send=rec)
        t0 = loop.time()
        link.start()
        await asyncio.sleep(22)
        await link.stop()
        return t0, rec.at("WATCHDOG=1")

    t0, pings = run_virtual(main())
    assert [p - t0 for p in pings] == [0.0, 5.0, 10.0, 15.0, 20.0]


async def test_a_blocked_loop_sends_no_pings() -> None:
    """A callback that blocks the loop for 0.6 s: the pings (every 50 ms otherwise) stop for
    exactly that long, because they come from the loop. A thread pinging would go on."""
    rec = Recorder(time.monotonic)
    link = SystemdLink(lambda: "x", watchdog=0.1, send=rec)
    blocked: list[float] = []

    def block() -> None:
        blocked.append(time.monotonic())
        time.sleep(0.6)
        blocked.append(time.monotonic())

    link.start()
    try:
        async with asyncio.timeout(20):
            while len(rec.at("WATCHDOG=1")) < 3:
                await rec.next()
            asyncio.get_running_loop().call_soon(block)
            while True:  # until a ping after the block
                t = await rec.next()
                if len(blocked) == 2 and t > blocked[1]:
                    break
    finally:
        await link.stop()
    start, end = blocked
    pings = rec.at("WATCHDOG=1")
    assert [t for t in pings if t < start], "pings before the block"
    assert [t for t in pings if start < t < end] == []
    assert [t for t in pings if t > end], "pings after the block"


def test_status_sent_on_change_at_most_once_per_period() -> None:
    async def main() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        rec = Recorder(loop.time)
        state = {"line": "backup, 0 services"}
        link = SystemdLink(lambda: state["line"], watchdog=None, send=rec, status_period=1.0)
        t0 = loop.time()
        link.ready()
        await asyncio.sleep(2.25)  # nothing changes: nothing sent after READY
        for n in range(1, 6):  # five changes within one period: only the last one is sent
            state["line"] = f"active, {n} services"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # at 3.75 s
        state["line"] = "active, 6 services"
        await asyncio.sleep(3)
        await link.stop()
        return [(round(t - t0, 3), m) for t, m in rec.sent]

    assert run_virtual(main()) == [
        (0.0, "READY=1\nSTATUS=backup, 0 services"),
        (3.0, "STATUS=active, 5 services"),
        (4.0, "STATUS=active, 6 services"),
    ]


def test_without_notify_socket_nothing_runs() -> None:
    class Src:
        reconciler = None

        def role(self) -> str:
            return "standalone"

    link = SystemdLink.from_env(Src(), {"WATCHDOG_USEC": "1000000"})
    assert link.send is None and link.watchdog is None

    async def main() -> None:
        link.ready()
        await link.stop()

    run_virtual(main())
    assert link.last_status == "standalone, 0 services, 0 destinations, 0 apply errors"


async def test_daemon_tells_systemd_its_role_and_table(
    tmp_path: Path, notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon in this process (memory plane, two loopback servers, one refusing): READY=1
    with the STATUS= line, pings at half WATCHDOG_USEC, STATUS= again when the table grows."""
    path, s = notify_socket
    s.setblocking(False)
    up = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    cfg = tmp_path / "hacontrol.yaml"
    cfg.write_text(f"""
node: {{name: unit}}
dataplane: {{kind: memory, state_dir: {tmp_path}/state}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {{type: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 1}}
    real_servers:
      - {{address: 127.0.0.1, port: {port}}}
      - {{address: 127.0.0.1, port: 9}}
""")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    d = Daemon(load(str(cfg)), dataplane=MemoryDataplane(), serve_api=False)
    got: list[str] = []

    async def until(cond: Callable[[], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not cond():
            assert loop.time() < deadline, f"timed out waiting for {what}: {got}"
            try:
                got.append(s.recv(200).decode())
            except BlockingIOError:
                await asyncio.sleep(0.02)

    await d.start()
    try:
        await until(lambda: any(m.startswith("READY=1\nSTATUS=standalone, ") for m in got),
                    "READY=1")  # fmt: skip
        line = "STATUS=standalone, 1 services, 1 destinations, 0 apply errors"
        await until(lambda: line in got or f"READY=1\n{line}" in got, line)
        await until(lambda: got.count("WATCHDOG=1") >= 3, "three pings")
    finally:
        await d.stop("test")
        up.close()
        await up.wait_closed()
    assert d.systemd.watchdog == 0.2
