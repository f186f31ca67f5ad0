"""The HealthChecker on a real kernel: a checker namespace probing server namespaces.

The checker runs inside its namespace as a small uvloop script (``RUNNER``) that logs structlog
JSON to stdout; the test reads the ``health.change`` events. Real servers are
``hacontrol.lab.backend`` processes (killed, hung with SIGUSR1, restarted) and a TLS server with a
self-signed certificate. Addresses: 192.0.2.0/24 inside the lab's namespaces only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

pytestmark = pytest.mark.root

CHK, RS1, RS2 = "192.0.2.1", "192.0.2.11", "192.0.2.12"
FAST = {"interval": 0.2, "timeout": 1.0, "rise": 2, "fall": 3}  # generous on a busy host

RUNNER = r"""
import asyncio, json, signal, sys
import uvloop
from hacontrol import logs
from hacontrol.health.scheduler import CheckKey, HealthChecker
from hacontrol.model import CheckConfig

logs.configure(level="info", fmt="json", stream=sys.stdout)
keys = []
for check, address, port in json.loads(sys.argv[1]):
    for k in ("expect_status", "command"):
        if k in check:
            check[k] = tuple(check[k])
    keys.append(CheckKey(CheckConfig(**check), address, port))

async def main() -> None:
    hc = HealthChecker()
    hc.set_targets(keys)
    await hc.start()
    print(json.dumps({"event": "runner.ready"}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), float(sys.argv[2]))
    except TimeoutError:
        pass
    await hc.stop()
    print(json.dumps({"event": "runner.stopped"}), flush=True)

uvloop.run(main())
"""

TLS_SERVER = r"""
import asyncio, ssl, sys

async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsecure\n")
        await w.drain()
    except Exception:
        pass
    w.close()

async def main() -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), ssl=ctx)
    print("ready", flush=True)
    async with server:
        await asyncio.sleep(float(sys.argv[5]))

asyncio.run(main())
"""


class Runner:
    """The checker process in its namespace, and the JSON events it printed."""

    def __init__(self, ns: Ns, targets: list[tuple[dict[str, Any], str, int]], tmp: Path) -> None:
        script = tmp / "runner.py"
        script.write_text(RUNNER)
        argv = [sys.executable, str(script), json.dumps(targets), "120"]
        self.proc = ns.popen(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait(lambda e: e["event"] == "runner.ready", 20, what="runner ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(ev)

    def changes(self, target: str, check: str) -> list[dict[str, Any]]:
        with self.lock:
            events = list(self.events)
        return [
            e
            for e in events
            if e.get("event") == "health.change" and e["target"] == target and e["check"] == check
        ]

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], limit: float = 20, what: str = ""
    ) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        seen = 0
        while time.monotonic() < deadline:
            with self.lock:
                batch = self.events[seen:]
            for e in batch:
                if pred(e):
                    return e
            seen += len(batch)
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"no event {what} within {limit}s; events: {self.events[-10:]} {err}")

    def wait_change(
        self, target: str, check: str, to: str, after: int = 0, limit: float = 20
    ) -> dict[str, Any]:
        """The first change of (target, check) to ``to`` that is the after-th change or later."""

        def pred(e: dict[str, Any]) -> bool:
            return (
                e.get("event") == "health.change"
                and e["target"] == target
                and e["check"] == check
                and e["to"] == to
                and self.changes(target, check).index(e) >= after
            )

        return self.wait(pred, limit, what=f"{target} {check} -> {to}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.wait(lambda e: e["event"] == "runner.stopped", 10, what="runner stopped")
            self.proc.wait(timeout=10)


@pytest.fixture
def lab(netns_lab: NetnsLab) -> NetnsLab:
    """chk (192.0.2.1), rs1 (.11), rs2 (.12) on one bridge in a switch namespace."""
    sw = netns_lab.add("sw")
    netns_lab.bridge(sw, "br0")
    for short, addr, port in (("chk", CHK, "pchk"), ("rs1", RS1, "prs1"), ("rs2", RS2, "prs2")):
        ns = netns_lab.add(short)
        netns_lab.attach(sw, "br0", ns, "eth0", port)
        ns.addr("eth0", f"{addr}/24")
    return netns_lab


def backend(ns: Ns, addr: str, port: int, name: str) -> subprocess.Popen[Any]:
    argv = [sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{addr}:{port}"]
    return ns.popen(*argv, "--name", name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill(p: subprocess.Popen[Any]) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=10)


def check(**kw: Any) -> dict[str, Any]:
    return {**FAST, **kw}


def test_tcp_http_kill_hang_restart(lab: NetnsLab, tmp_path: Path) -> None:
    chk, rs1, rs2 = lab["chk"], lab["rs1"], lab["rs2"]
    b1 = backend(rs1, RS1, 80, "rs1")
    b2 = backend(rs2, RS2, 8080, "rs2")
    wait_tcp(chk, RS1, 80)
    wait_tcp(chk, RS2, 8080)
    t1, t2 = f"{RS1}:80", f"{RS2}:8080"
    runner = Runner(
        chk,
        [
            (check(type="tcp"), RS1, 80),
            (check(type="http", expect_body="rs1"), RS1, 80),
            (check(type="tcp"), RS2, 8080),
            (check(type="http", path="/health"), RS2, 8080),
        ],
        tmp_path,
    )
    try:
        for target, kind in ((t1, "tcp"), (t1, "http"), (t2, "tcp"), (t2, "http")):
            up = runner.wait_change(target, kind, "up")
            assert (up["from"], up["successes"]) == ("unknown", 1)  # UP on its first success

        # stopped server: refused, DOWN after exactly `fall` failures
        kill(b1)
        for kind in ("tcp", "http"):
            down = runner.wait_change(t1, kind, "down")
            assert (down["from"], down["reason"]) == ("up", "connection refused")
            assert (down["failures"], down["successes"]) == (FAST["fall"], 0)

        # restarted: back UP after exactly `rise` successes
        b1 = backend(rs1, RS1, 80, "rs1")
        for kind in ("tcp", "http"):
            up = runner.wait_change(t1, kind, "up", after=2)
            assert up["from"] == "down" and up["successes"] == FAST["rise"]
        assert runner.changes(t1, "http")[-1]["reason"] == "status 200, body matched"

        # hung server: accepts but never answers -> http times out at `timeout`, tcp stays up
        b2.send_signal(signal.SIGUSR1)
        down = runner.wait_change(t2, "http", "down")
        assert down["reason"] == f"timeout after {FAST['timeout']:g}s (no response)"
        assert down["failures"] == FAST["fall"]
        assert runner.changes(t2, "tcp")[-1]["to"] == "up"
        b2.send_signal(signal.SIGUSR1)  # answers again
        up = runner.wait_change(t2, "http", "up", after=2)
        assert up["successes"] == FAST["rise"]
        assert len(runner.changes(t2, "tcp")) == 1  # never flapped
    finally:
        runner.stop()


def _sleepers(ns: Ns) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True, text=True).stdout
    found = []
    for pid in out.split():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x0030\x00":
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_exec_checks(lab: NetnsLab, tmp_path: Path) -> None:
    chk = lab["chk"]
    runner = Runner(
        chk,
        [
            (
                check(type="exec", command=["sh", "-c", "test {address}:{port} = " + f"{RS1}:80"]),
                RS1,
                80,
            ),
            (check(type="exec", command=["sh", "-c", "echo broken {port} >&2; exit 1"]), RS1, 81),
            (check(type="exec", command=["sleep", "30"]), RS1, 82),
        ],
        tmp_path,
    )
    try:
        up = runner.wait_change(f"{RS1}:80", "exec", "up")
        assert up["reason"] == "exit 0"
        down = runner.wait_change(f"{RS1}:81", "exec", "down")
        assert down["reason"] == "exit 1: broken 81" and down["failures"] == FAST["fall"]
        down = runner.wait_change(f"{RS1}:82", "exec", "down")
        assert down["reason"] == f"timeout after {FAST['timeout']:g}s"
        # each hanging child is killed at its timeout: never more than the one in flight
        for _ in range(10):
            assert len(_sleepers(chk)) <= 1
            time.sleep(0.1)
    finally:
        runner.stop()
    assert _sleepers(chk) == []  # stop() killed the last one


def make_cert(tmp: Path, ip: str) -> tuple[Path, Path]:
    crt, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        cmd = (
            f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
            f"-days 2 -subj /CN={ip} -addext subjectAltName=IP:{ip}"
        ).split()
        subprocess.run(
            [*cmd, "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True
        )
        return crt, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .sign(pkey, hashes.SHA256())
    )
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, key


@contextmanager
def tls_servers(ns: Ns, tmp: Path, addr: str, ports: list[int]) -> Iterator[None]:
    crt, key = make_cert(tmp, addr)
    script = tmp / "tls_server.py"
    script.write_text(TLS_SERVER)
    procs = []
    try:
        for port in ports:
            p = ns.popen(
                sys.executable,
                str(script),
                addr,
                str(port),
                str(crt),
                str(key),
                "120",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield
    finally:
        for p in procs:
            kill(p)


def test_https_verify_on_and_off(lab: NetnsLab, tmp_path: Path) -> None:
    chk, rs2 = lab["chk"], lab["rs2"]
    on, off = f"{RS2}:8443", f"{RS2}:8444"
    with tls_servers(rs2, tmp_path, RS2, [8443, 8444]):
        wait_tcp(chk, RS2, 8443)
        wait_tcp(chk, RS2, 8444)
        runner = Runner(
            chk,
            [
                (check(type="https", verify_tls=True), RS2, 8443),
                (check(type="https", verify_tls=False, expect_body="secure"), RS2, 8444),
            ],
            tmp_path,
        )
        try:
            down = runner.wait_change(on, "https", "down")
            up = runner.wait_change(off, "https", "up")
        finally:
            runner.stop()
    # verification on: a self-signed certificate fails, and the reason says so
    assert down["reason"].startswith("tls: certificate verify failed"), down
    assert "self-signed" in down["reason"] or "self signed" in down["reason"], down
    assert (down["from"], down["failures"]) == ("unknown", FAST["fall"])
    # verification off: the same kind of server passes, body checked over TLS
    assert (up["reason"], up["successes"]) == ("status 200, body matched", 1)
    assert [e["to"] for e in runner.changes(on, "https")] == ["down"]
    assert [e["to"] for e in runner.changes(off, "https")] == ["up"]
