"""The real ``hacontrol run`` process talking to a fake systemd: a unix datagram socket this test
binds and names in ``NOTIFY_SOCKET``, with ``WATCHDOG_USEC`` set as systemd sets it for
``WatchdogSec=``. Memory data plane, real TCP checks on loopback (needs no root).

In order: READY=1 with the first STATUS= line; STATUS= again once the checked server is up
("standalone, 1 services, 1 destinations, 0 apply errors"); WATCHDOG=1 pings. SIGSTOP: a stopped
process sends nothing (the socket stays silent for three ping periods); SIGCONT: the pings come
back. SIGHUP with a second server: RELOADING=1, READY=1, and a STATUS= line with 2 destinations.
SIGTERM: STOPPING=1 and exit 0.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s
TIMEOUT = 30.0


class FakeSystemd:
    """The notification socket; ``got`` keeps every datagram in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o666)  # a daemon under another user may send too
        self.got: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None  # fail fast when it exits

    def recv(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            msg = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.got.append(msg)
        return msg

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = TIMEOUT) -> str:
        """The next message for which ``cond`` holds (messages before it are kept in ``got``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(min(left, 1.0))
            if msg is not None and cond(msg):
                return msg
            if msg is None and self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before {what}")
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {self.got}")

    def drain(self) -> list[str]:
        out = []
        while (msg := self.recv(0.01)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


def listener() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(64)  # the kernel completes the handshakes: a TCP check needs no accept
    return s


def config(tmp: Path, ports: list[int]) -> str:
    servers = "\n".join(f"      - {{address: 127.0.0.1, port: {p}}}" for p in ports)
    return f"""
node: {{name: wd}}
api: {{listen: "unix:{tmp}/run/api.sock"}}
dataplane: {{kind: memory, state_dir: {tmp}/state}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {{type: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 1}}
    real_servers:
{servers}
"""


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fs = FakeSystemd(tmp_path / "notify")
    try:
        yield fs
    finally:
        fs.close()


def test_watchdog_status_and_a_stopped_process(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    sd = fake_systemd
    a, b = listener(), listener()
    ports = [s.getsockname()[1] for s in (a, b)]
    cfg = tmp_path / "hacontrol.yaml"
    cfg.write_text(config(tmp_path, ports[:1]))
    env = dict(os.environ, NOTIFY_SOCKET=str(sd.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)  # unset: meant for whoever reads it (systemd sets the PID)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "hacontrol", "run", "-c", str(cfg)],
                             stdout=out, stderr=out, env=env, start_new_session=True)  # fmt: skip
    sd.proc = p
    try:
        ready = sd.wait(lambda m: m.startswith("READY=1"), "READY=1")
        assert ready.startswith("READY=1\nSTATUS=standalone, ")  # the table as far as applied
        sd.wait(lambda m: m == "STATUS=standalone, 1 services, 1 destinations, 0 apply errors"
                or m.endswith("\nSTATUS=standalone, 1 services, 1 destinations, 0 apply errors"),
                "the STATUS= line with the server up")  # fmt: skip
        for _ in range(3):
            sd.wait(lambda m: m == "WATCHDOG=1", "a ping")

        # a stopped process sends nothing: no ping for three periods
        os.kill(p.pid, signal.SIGSTOP)
        deadline = time.monotonic() + TIMEOUT
        while proc_state(p.pid) != "T":
            assert time.monotonic() < deadline, "the daemon never stopped"
            time.sleep(0.01)
        sd.drain()  # what it sent before it stopped
        silent_for = 3 * WATCHDOG_USEC / 2 / 1e6
        assert sd.recv(silent_for) is None, sd.got[-3:]
        os.kill(p.pid, signal.SIGCONT)
        sd.wait(lambda m: m == "WATCHDOG=1", "a ping after SIGCONT")
        assert p.poll() is None

        # a reload adds a server: RELOADING=1, READY=1, then the STATUS= line with 2 destinations
        cfg.write_text(config(tmp_path, ports))
        n = len(sd.got)
        p.send_signal(signal.SIGHUP)
        sd.wait(lambda m: m.endswith("2 destinations, 0 apply errors"), "2 destinations")
        seen = [m for m in sd.got[n:] if m != "WATCHDOG=1"]
        assert seen[:2] == ["RELOADING=1", "READY=1"], seen

        p.send_signal(signal.SIGTERM)
        sd.wait(lambda m: m == "STOPPING=1", "STOPPING=1")
        assert p.wait(timeout=TIMEOUT) == 0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        a.close()
        b.close()
        print("--- daemon log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-30:]))
