"""The CLI: check exit codes and output, version, status/reload against a running daemon (unix
socket), unreachable daemon, the lab hook and the ``python -m hacontrol`` entry."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hacontrol import __version__, cli
from hacontrol.config import load
from hacontrol.daemon import Daemon
from hacontrol.dataplane.memory import MemoryDataplane

GOOD = """
node: {name: clitest}
dataplane: {kind: memory, state_dir: STATE}
API
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {type: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 1}
    real_servers:
      - {address: 127.0.0.1, port: PORT, weight: 3}
      - {address: 127.0.0.1, port: 9, weight: 1}
  - name: dns
    vip: 192.0.2.10
    port: 53
    protocol: udp
    check: {type: none}
    real_servers:
      - {address: 198.51.100.2, port: 53}
"""


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = cli.main(argv, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def write(tmp: Path, text: str, port: int = 8080, api: str = "") -> Path:
    p = tmp / "hacontrol.yaml"
    p.write_text(
        text.replace("STATE", str(tmp / "state")).replace("PORT", str(port)).replace("API", api)
    )
    return p


def test_check_ok(tmp_path: Path) -> None:
    rc, out, err = run(["check", "-c", str(write(tmp_path, GOOD))])
    assert (rc, out, err) == (0, "ok: 2 services, 3 real servers\n", "")


def test_check_reports_every_error(tmp_path: Path) -> None:
    """Field errors and cross-field ones (a duplicate service) in one run, then the count."""
    bad = (
        GOOD.replace("port: 80", "port: eighty").replace("weight: 3", "weight: -1")
        + "  - {name: dns2, vip: 192.0.2.10, port: 53, protocol: udp, scheduler: nope}\n"
    )
    path = write(tmp_path, bad)
    rc, out, err = run(["check", "-c", str(path)])
    assert rc == 1 and out == ""
    *lines, last = err.splitlines()
    assert last == f"{path}: 4 errors"
    for line in lines:
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+: services\[\d\]\S*: .+", line), line
    assert [line.split(": ", 2)[1] for line in lines] == [
        "services[0].port", "services[0].real_servers[0].weight",
        "services[2]", "services[2].scheduler",
    ]  # fmt: skip
    assert "same protocol, vip and port as services[1]" in lines[2]


def test_check_refuses_a_short_secret_that_run_refuses(tmp_path: Path) -> None:
    key = tmp_path / "ha.key"
    key.write_text("  8bytes!  \n")
    ha = (
        f"ha: {{bind: '192.0.2.1:5405', peers: ['192.0.2.2:5405'], secret_file: {key}}}\n"
    )
    path = write(tmp_path, GOOD + ha)
    rc, out, err = run(["check", "-c", str(path)])
    assert rc == 1 and out == ""
    assert err.splitlines() == [
        f"{path}:20: ha.secret_file: {key}: the key must be at least 16 bytes (surrounding "
        "whitespace not counted), got 7",
        f"{path}: 1 error",
    ]
    key.write_text("0123456789abcdef\n")
    assert run(["check", "-c", str(path)])[0] == 0


def test_check_refuses_an_alias_bomb_quickly(tmp_path: Path) -> None:
    """A merge-key bomb: one <root> error and the count, not a CPU pinned."""
    text = "node: {name: d1}\nx-0: &a0 {k: 1}\n" + "".join(
        f"x-{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 8)}], k{i}: 1}}\n" for i in range(1, 12)
    )
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    rc, out, err = run(["check", "-c", str(path)])
    assert rc == 1 and out == ""
    first, last = err.splitlines()
    assert first.startswith(f"{path}:") and ": <root>: " in first and "alias bomb" in first
    assert last == f"{path}: 1 error"


def test_check_missing_file(tmp_path: Path) -> None:
    rc, out, err = run(["check", "-c", str(tmp_path / "nope.yaml")])
    assert rc == 1 and out == "" and "nope.yaml" in err


def test_version() -> None:
    assert run(["version"]) == (0, f"hacontrol {__version__}\n", "")
    assert run(["--version"]) == (0, f"hacontrol {__version__}\n", "")


@pytest.mark.parametrize("arg", ["version", "--version"])
def test_python_dash_m_entry(arg: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hacontrol", arg], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == f"hacontrol {__version__}\n"


def test_usage_error_exit_code() -> None:
    with pytest.raises(SystemExit) as exc:
        run(["run"])  # -c is required
    assert exc.value.code == 2


def test_status_unreachable(tmp_path: Path) -> None:
    rc, out, err = run(["status", "--api", f"unix:{tmp_path}/none.sock", "--timeout", "2"])
    assert rc == 2 and out == "" and "cannot reach the daemon" in err


def test_lab_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    import hacontrol.lab.demo as demo

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    monkeypatch.setattr(demo, "main", fake_main)
    assert run(["lab", "--keep", "-v"])[0] == 3
    assert seen == [["--keep", "-v"]]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path, str]]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = backend.sockets[0].getsockname()[1]
    token = tmp_path / "token"
    token.write_text("abc123\n")
    sock = f"unix:{tmp_path}/run/api.sock"
    path = write(tmp_path, GOOD, port, api=f'api: {{listen: "{sock}", token_file: {token}}}')
    d = Daemon(load(str(path)), dataplane=MemoryDataplane())
    await d.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while d.status()["services"][0]["real_servers"][0]["kernel_weight"] != 3:
            assert loop.time() < deadline, "real server never came up"
            await asyncio.sleep(0.02)
        yield d, path, sock
    finally:
        await d.stop("test")
        backend.close()
        await backend.wait_closed()


async def arun(argv: list[str]) -> tuple[int, str, str]:
    return await asyncio.get_running_loop().run_in_executor(None, run, argv)


async def test_status_table_and_json(daemon: tuple[Daemon, Path, str]) -> None:
    _, path, sock = daemon
    rc, out, err = await arun(["status", "-c", str(path)])  # api address from the config
    assert rc == 0, err
    assert "node clitest  role standalone" in out
    assert re.search(r"web\s+tcp/192\.0\.2\.10:80\s+wrr/nat\s+up 1/2", out), out
    # memory plane: no connection counters ("-"); a down server shows for how long
    assert re.search(r"127\.0\.0\.1:\d+\s+up\s+3\s+3\s+-\s+connected", out), out
    assert re.search(r"127\.0\.0\.1:9\s+(down \d+s|unknown)\s+1\s+-\s+-", out), out
    rc, out, _ = await arun(["status", "--api", sock, "--json", "--service", "dns"])
    doc: dict[str, Any] = json.loads(out)
    assert rc == 0 and [s["name"] for s in doc["services"]] == ["dns"]
    rc, _, err = await arun(["status", "--api", sock, "--service", "nope"])
    assert rc == 1 and "404" in err


async def test_reload_with_and_without_token(
    daemon: tuple[Daemon, Path, str], tmp_path: Path
) -> None:
    _, path, sock = daemon
    rc, _, err = await arun(["reload", "--api", sock])  # no token: refused
    assert rc == 1 and "401" in err
    rc, out, err = await arun(["reload", "-c", str(path)])  # token from the config
    assert rc == 0 and out.startswith("ok: reloaded") and "(no change)" in out, err
    other = tmp_path / "other-token"
    other.write_text("abc123")
    rc, out, err = await arun(["reload", "--api", sock, "--token-file", str(other)])
    assert rc == 0, err


async def test_reload_refused_prints_errors(daemon: tuple[Daemon, Path, str]) -> None:
    d, path, _ = daemon
    good = path.read_text()
    path.write_text(good.replace("port: 80", "port: 0"))
    # -c reads only the api section: the daemon judges the file and the CLI prints its verdict
    rc, _out, err = await arun(["reload", "-c", str(path)])
    assert rc == 1 and "422" in err and "services[0].port" in err, err
    rc, _out, err = await arun(
        ["reload", "--api", d.config.api.listen, "--token-file", str(d.config.api.token_file)]
    )
    assert rc == 1 and "422" in err and "services[0].port" in err
    assert d.config.services[0].port == 80
    # not even YAML: -c cannot find the address and says so; the options still reach the daemon
    path.write_text(good + "\n  : [\n")
    rc, _out, err = await arun(["reload", "-c", str(path)])
    assert rc == 1 and "cannot find the API address" in err and "--api" in err, err
    rc, _out, err = await arun(
        ["reload", "--api", d.config.api.listen, "--token-file", str(d.config.api.token_file)]
    )
    assert rc == 1 and "422" in err, err
    path.write_text(good)
    rc, out, err = await arun(["reload", "-c", str(path)])
    assert rc == 0 and out.startswith("ok: reloaded"), err


async def test_status_reads_no_secret_file(daemon: tuple[Daemon, Path, str]) -> None:
    """An operator may not read the HA key: ``status -c`` opens no secret file."""
    _, path, _ = daemon
    text = path.read_text()
    key = path.parent / "ha.key"
    key.write_text("00" * 32 + "\n")
    key.chmod(0o600)
    ha = (
        "ha: {bind: 0.0.0.0:5405, peers: ['192.0.2.99:5405'], secret_file: KEY,"
        " vips: [{address: 192.0.2.10/24, interface: eth0}]}\n"
    ).replace("KEY", str(key))
    path.write_text(text + ha)
    key.write_text("short\n")  # as unusable as an unreadable one: check refuses it
    rc, _, err = run(["check", "-c", str(path)])
    assert rc == 1 and "ha.secret_file" in err and "1 error" in err, err
    rc, out, err = await arun(["status", "-c", str(path)])
    assert rc == 0 and "node clitest" in out, err


# -- HA: drills and the status block (a fake runner inside a real daemon) ------------------------


class FakeRunner:
    def __init__(self) -> None:
        self.role = "active"
        self.notifier: Any = None
        self.digest = b""
        self.drills: list[str] = []

    async def start(self) -> None:
        pass

    async def stop(self, graceful: bool = True) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {
            "node": "clitest", "role": self.role, "reason": "peer lb2 is backup; we win",
            "since": "2026-01-01T10:00:00Z", "since_ago": 42.0, "priority": 150,
            "effective_priority": 150, "blocked": False, "handing_over": False,
            "faults": [{"name": "gateway:192.0.2.254", "blocking": False, "reason": "3 lost"}],
            "peer": {"name": "lb2", "role": "backup", "priority": 100, "effective_priority": 100,
                     "alive": True, "last_heard_ago": 0.1, "config_match": False,
                     "blocked": False, "healthy": 1,
                     "paths": {"192.0.2.12:5405": {"last_heard_ago": 0.1}}},
            "peers_configured": ["192.0.2.12:5405"],
            "vips": [{"address": "198.51.100.10/24", "interface": "eth0", "present": True,
                      "lease_left": 2.5}],
            "vips_held": True, "lease": 3.0,
            "transitions": [{"ago": 42.0, "from": "starting", "to": "active",
                             "reason": "no peer heard in the start-up listen"}],
        }  # fmt: skip

    async def drill_handover(self) -> dict[str, Any]:
        self.drills.append("handover")
        self.role = "backup"
        return {"drill": "handover", "ok": True, "handover_sent": 0.0, "detection": 0.0012,
                "vip_added": 0.0031, "announcements_sent": 0.0033, "announce_count": 5,
                "first_heartbeat_as_active": 0.0042, "released_here": 0.0051,
                "overlap": 0.002, "gap": 0.0}  # fmt: skip

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        self.drills.append(f"fault {seconds:g}")
        return {"drill": "fault", "ok": True, "seconds": seconds, "fault": 0.0,
                "detection": 0.61, "vip_added": 0.613, "announcements_sent": 0.614,
                "announce_count": 5, "first_heartbeat_as_active": 0.62, "gap": 0.614}  # fmt: skip


HA = """
ha:
  bind: 192.0.2.11:5405
  peers: [192.0.2.12:5405]
  interval: 100ms
  secret_file: KEY
  vips: [{address: 198.51.100.10/24, interface: eth0}]
"""


@pytest.fixture
async def ha_daemon(tmp_path: Path) -> AsyncIterator[tuple[FakeRunner, Path, str]]:
    token = tmp_path / "token"
    token.write_text("abc123\n")
    key = tmp_path / "ha.key"
    key.write_text("k" * 32)
    sock = f"unix:{tmp_path}/run/api.sock"
    text = GOOD + HA.replace("KEY", str(key))
    path = write(tmp_path, text, 19, api=f'api: {{listen: "{sock}", token_file: {token}}}')
    runner = FakeRunner()
    d = Daemon(load(str(path)), dataplane=MemoryDataplane(), ha=runner)
    await d.start()
    try:
        yield runner, path, sock
    finally:
        await d.stop("test")


async def test_status_shows_the_ha_block_above_the_services(
    ha_daemon: tuple[FakeRunner, Path, str],
) -> None:
    _, _, sock = ha_daemon
    rc, out, err = await arun(["status", "--api", sock])
    assert rc == 0, err
    assert "role active" in out.splitlines()[0]
    assert "ha role ACTIVE since 2026-01-01T10:00:00Z (42.0s ago): peer lb2 is backup" in out
    assert "peer lb2 backup priority 100 (effective 100) alive" in out
    assert "192.0.2.12:5405 0.1s ago" in out
    assert "CONFIG DIGEST MISMATCH" in out
    assert "198.51.100.10/24 on eth0: present, 2.5s left" in out
    assert "starting -> active: no peer heard in the start-up listen" in out
    assert "fault gateway:192.0.2.254: 3 lost" in out
    assert out.index("ha role") < out.index("\nweb ")


async def test_drill_handover_prints_the_timeline(ha_daemon: tuple[FakeRunner, Path, str]) -> None:
    runner, path, sock = ha_daemon
    rc, _, err = await arun(["drill", "handover", "--api", sock])  # no token
    assert rc == 1 and "401" in err and runner.drills == []
    rc, out, err = await arun(["drill", "handover", "-c", str(path)])  # token from the config
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "drill handover: ok"
    assert re.search(r"\+0\.0 ms\s+handover sent to the peer", out)
    assert re.search(r"\+3\.1 ms\s+peer added the VIPs", out)
    assert re.search(r"\+5\.1 ms\s+this node released its VIPs", out)
    assert "gap: 0.000s" in out and "announcements sent by the peer: 5" in out
    steps = [float(m) for m in re.findall(r"^\s+\+([\d.]+) ms", out, re.M)]
    assert steps == sorted(steps) and len(steps) == 6
    rc, out, err = await arun(["drill", "handover", "-c", str(path), "--json"])
    assert rc == 0 and json.loads(out)["gap"] == 0.0


async def test_drill_fault_seconds(ha_daemon: tuple[FakeRunner, Path, str]) -> None:
    runner, path, _ = ha_daemon
    rc, out, err = await arun(["drill", "fault", "-c", str(path), "--seconds", "2"])
    assert rc == 0, err
    assert out.startswith("drill fault (2s): ok") and "gap: 0.614s" in out
    rc, _, err = await arun(["drill", "fault", "-c", str(path), "--seconds", "0.1"])
    assert rc == 1 and "400" in err and "dead interval" in err
    assert runner.drills == ["fault 2"]


def test_drill_needs_a_kind_and_seconds() -> None:
    with pytest.raises(SystemExit) as e:
        run(["drill"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        run(["drill", "fault"])
    assert e.value.code == 2


async def test_drill_on_a_standalone_daemon_is_refused(daemon: tuple[Daemon, Path, str]) -> None:
    _, path, _ = daemon
    rc, _, err = await arun(["drill", "handover", "-c", str(path)])
    assert rc == 1 and "409" in err and "no ha: section" in err
