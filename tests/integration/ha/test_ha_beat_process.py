"""The heartbeat sender process follows its daemon (real processes, real UDP on loopback): the
owner is a small program running a real HaRunner with ``beat="process"`` as the daemon does.
SIGSTOP of the owner silences the sender at once (it reads the owner's state, not only the age
of its last publish: the window here is 0.5 s), SIGCONT brings the heartbeats back; kill -9 of
the owner ends the sender (end of its input, PR_SET_PDEATHSIG) and frees the heartbeat port, so
a restarted daemon can bind it; a sender killed alone leaves the heartbeats to the daemon's event
loop again. Every process is killed at the end, also on failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

OWNER = r"""
import asyncio, ipaddress, socket, sys
from hacontrol.clock import loop_clock
from hacontrol.ha.notify import CommandNotifier
from hacontrol.ha.runner import HaRunner
from hacontrol.ha.vip import VipGroup
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint, HAConfig

async def main():
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind(("127.0.0.1", int(sys.argv[1])))
    lo = ipaddress.ip_address("127.0.0.1")
    cfg = HAConfig(bind=Endpoint(lo, int(sys.argv[1])), peers=(Endpoint(lo, int(sys.argv[2])),),
                   secret_file="-", priority=100, interval=0.1, dead_after=3, lease=None)
    r = HaRunner(cfg, "dir-a", b"beat process test key", clock=loop_clock(), metrics=Metrics(),
                 vips=VipGroup(()), notifier=CommandNotifier((), node="dir-a"),
                 health_summary=lambda: [("web", 1, 1)], digest="cd" * 32,
                 state_dir=sys.argv[3], sock=own, beat="process", stall_factor=5.0)
    await r.start()
    while not r.speaker.sending:
        await asyncio.sleep(0.05)
    with open(sys.argv[3] + "/sender.pid", "w") as f:
        f.write(str(r.speaker.sender.proc.pid))
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def state(pid: int) -> bytes:
    """The process state letter from /proc (b"" when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return b""


def gone(pid: int) -> bool:
    return state(pid) in (b"", b"Z", b"X")


def wait_for(cond: Callable[[], bool], within: float = 20.0) -> None:
    end = time.monotonic() + within
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def owner(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, socket.socket, int]]:
    """The owner program, its sender's pid, the peer's socket and the owner's port."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", OWNER, str(port), str(sink.getsockname()[1]), str(tmp_path)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    child = 0
    try:
        pidfile = tmp_path / "sender.pid"
        wait_for(lambda: (pidfile.exists() and pidfile.read_text() != "") or p.poll() is not None)
        child = int(pidfile.read_text())
        yield p, child, sink, port
    finally:
        for pid in (p.pid, child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if pid:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
        p.wait(10)
        sink.close()


def drain(sock: socket.socket, seconds: float) -> list[float]:
    """Arrival times (monotonic) of the heartbeats read for ``seconds``."""
    got: list[float] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        with contextlib.suppress(TimeoutError):
            sock.recv(2048)
            got.append(time.monotonic())
    return got


def test_sigstop_silences_the_sender_and_sigcont_brings_it_back(
    owner: tuple[subprocess.Popen[bytes], int, socket.socket, int],
) -> None:
    p, child, sink, _ = owner
    assert len(drain(sink, 0.5)) >= 3  # the sender speaks
    os.kill(p.pid, signal.SIGSTOP)
    wait_for(lambda: state(p.pid) == b"T")
    drain(sink, 0.1)  # at most one copy was already on its way
    assert drain(sink, 0.3) == [], "the sender spoke for a stopped daemon"
    assert not gone(child)
    os.kill(p.pid, signal.SIGCONT)
    assert len(drain(sink, 1.0)) >= 3


def test_kill_9_of_the_daemon_ends_the_sender_and_frees_the_port(
    owner: tuple[subprocess.Popen[bytes], int, socket.socket, int],
) -> None:
    p, child, sink, port = owner
    assert len(drain(sink, 0.3)) >= 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    wait_for(lambda: gone(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # a restarted daemon can bind it
    drain(sink, 0.1)
    assert drain(sink, 0.3) == []


def test_a_dead_sender_leaves_the_heartbeats_to_the_daemon(
    owner: tuple[subprocess.Popen[bytes], int, socket.socket, int],
) -> None:
    """Kill -9 of the sender process alone: the daemon notices (its tick) and sends again."""
    p, child, sink, _ = owner
    assert len(drain(sink, 0.3)) >= 2
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: gone(child))
    drain(sink, 0.5)  # the daemon's next ticks notice
    assert len(drain(sink, 1.0)) >= 5 and p.poll() is None

