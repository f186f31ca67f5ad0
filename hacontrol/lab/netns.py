"""Network namespaces for the lab, the integration tests and the benchmarks.

``NetnsLab`` creates namespaces under one unique prefix, wires them with veth pairs and bridges,
starts processes inside them, and removes every namespace, process and link it made on ``close()``
(also after a failure: use it as a context manager). It shells out to ``ip``: this is test and
lab scaffolding, never the daemon. Only documentation address ranges should be used inside.
``LoopThread`` runs an event loop on a thread of its own, optionally inside one namespace (one
per simulated director in the in-process tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_counter = 0


def _run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


@dataclass
class Ns:
    """One network namespace."""

    name: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return _run(self.argv(*cmd), check=check, timeout=timeout)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(*cmd), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def addr(self, ifname: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", ifname, *(["nodad"] if ":" in cidr else []))

    def up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def down(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "down")

    def route(self, dest: str, via: str) -> None:
        self.ip("route", "add", dest, "via", via)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def enter(self) -> None:
        """Move the calling thread into this namespace (sockets it opens from now on live
        there); for a thread of its own, not the main one."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a thread that entered this namespace (the sockets it makes, pyroute2's
        netlink included, stay there) and return its result or raise its exception."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                self.enter()
                out["v"] = fn()
            except BaseException as e:  # re-raised in the caller
                out["e"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        value: T = out["v"]
        return value

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        # anything else still inside (spawned by others)
        r = _run(["ip", "netns", "pids", self.name], check=False)
        for pid in r.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        self.procs.clear()


class NetnsLab:
    """A set of namespaces sharing a unique prefix; removes everything it made on close()."""

    def __init__(self, prefix: str | None = None) -> None:
        global _counter
        _counter += 1
        self.prefix = prefix or f"hc{os.getpid()}x{_counter}"
        self.namespaces: dict[str, Ns] = {}
        self._links = 0
        self.tmp: list[Path] = []

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, short: str, forward: bool = False) -> Ns:
        name = f"{self.prefix}-{short}"
        _run(["ip", "netns", "add", name])
        ns = Ns(name)
        self.namespaces[short] = ns
        ns.up("lo")
        if forward:
            ns.sysctl("net.ipv4.ip_forward", "1")
            ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        return ns

    def __getitem__(self, short: str) -> Ns:
        return self.namespaces[short]

    def link(self, a: Ns, a_if: str, b: Ns, b_if: str) -> None:
        """A veth pair between two namespaces, both ends up."""
        self._links += 1
        tmp_a, tmp_b = (
            f"hcv{os.getpid() % 10000}a{self._links}",
            f"hcv{os.getpid() % 10000}b{self._links}",
        )
        _run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        _run(["ip", "link", "set", tmp_a, "netns", a.name, "name", a_if])
        _run(["ip", "link", "set", tmp_b, "netns", b.name, "name", b_if])
        a.up(a_if)
        b.up(b_if)

    def bridge(self, host: Ns, name: str) -> None:
        """A bridge inside ``host`` (a namespace playing the switch)."""
        host.ip("link", "add", name, "type", "bridge", "forward_delay", "0")
        host.up(name)

    def attach(self, switch: Ns, bridge: str, ns: Ns, ifname: str, port: str) -> None:
        """Plug ``ns``'s ``ifname`` into ``bridge`` in ``switch`` through a veth named ``port``."""
        self.link(ns, ifname, switch, port)
        switch.ip("link", "set", port, "master", bridge)

    def close(self) -> None:
        for ns in self.namespaces.values():
            ns.kill_all()
        for ns in self.namespaces.values():
            _run(["ip", "netns", "del", ns.name], check=False)
        self.namespaces.clear()


def cleanup_stale(prefix: str = "hc") -> int:
    """Remove namespaces left by a crashed earlier run whose creator process is gone."""
    removed = 0
    out = _run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(prefix) or "x" not in name or "-" not in name:
            continue
        pid_part = name[len(prefix) :].split("x", 1)[0]
        if pid_part.isdigit() and not Path(f"/proc/{pid_part}").exists():
            Ns(name).kill_all()
            _run(["ip", "netns", "del", name], check=False)
            removed += 1
    return removed


def wait_tcp(ns: Ns, host: str, port: int, timeout: float = 30.0) -> None:
    """Wait until a TCP connect to host:port from inside ``ns`` succeeds."""
    deadline = time.monotonic() + timeout
    script = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1);s.close()"
    )
    while True:
        r = ns.run(sys.executable, "-c", script, host, str(port), check=False)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{host}:{port} not reachable from {ns.name}: {r.stderr.strip()[-200:]}"
            )
        time.sleep(0.1)


class LoopThread:
    """An event loop in a thread of its own; with ``ns``, the thread lives in that namespace, so
    every socket the code running on it opens (UDP, netlink, AF_PACKET) belongs there, as in a
    daemon started there."""

    def __init__(self, ns: Ns | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                if ns is not None:
                    ns.enter()
            except BaseException as e:
                errors.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]

    def run(self, coro: Any, within: float = 30.0) -> Any:
        """Run ``coro`` on the loop and wait for its result (at most ``within`` seconds)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(within)

    def hold(self, seconds: float) -> None:
        """Hold this loop for ``seconds`` (a callback that sleeps: big work, in a test);
        returns once it ran."""
        done = threading.Event()

        def hold() -> None:
            time.sleep(seconds)  # nothing else runs on this loop meanwhile
            done.set()

        self.loop.call_soon_threadsafe(hold)
        if not done.wait(seconds + 30.0):
            raise TimeoutError(f"the loop did not run a {seconds} s hold within 30 s")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
