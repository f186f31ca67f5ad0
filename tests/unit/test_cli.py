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
    bad = GOOD.replace("port: 80", "port: eighty").replace("weight: 3", "weight: -1")
    path = write(tmp_path, bad)
    rc, out, err = run(["check", "-c", str(path)])
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+: services\[0\]\.\S+: .+", line), line
    assert "services[0].port" in lines[0] and "weight" in lines[1]


def test_check_missing_file(tmp_path: Path) -> None:
    rc, out, err = run(["check", "-c", str(tmp_path / "nope.yaml")])
    assert rc == 1 and out == "" and "nope.yaml" in err


def test_version() -> None:
    assert run(["version"]) == (0, f"hacontrol {__version__}\n", "")


def test_python_dash_m_entry() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hacontrol", "version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == f"hacontrol {__version__}"


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
    assert re.search(r"127\.0\.0\.1:\d+\s+up\s+3\s+3\s+connected", out), out
    assert re.search(r"127\.0\.0\.1:9\s+(down|unknown)\s+1\s+-", out), out
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
    rc, _out, err = await arun(["reload", "-c", str(path)])
    # -c parses the (now broken) file to find the API: that refusal is the CLI's own
    assert rc == 1 and "services[0].port" in err
    rc, _out, err = await arun(
        ["reload", "--api", d.config.api.listen, "--token-file", str(d.config.api.token_file)]
    )
    assert rc == 1 and "422" in err and "services[0].port" in err
    assert d.config.services[0].port == 80
