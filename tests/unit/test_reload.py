"""Reloads parse in a child process bounded in time and memory, so a slow or huge file blocks
neither the event loop, nor the API, nor stop. Real child processes, a real daemon object on the
in-memory plane, a real API on a unix socket; the slow file is a FIFO nobody writes (the child
waits in open() for ever, burning no CPU)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from hacontrol.config import load
from hacontrol.config.limits import MAX_ERRORS
from hacontrol.daemon import Daemon
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.model import Config
from hacontrol.reload_parse import Refused, parse_in_child
from tests.reload_children import parser_children

BOUND = 20.0  # generous upper bound for anything that must happen "at once"

CONFIG = """
node: {{name: unit}}
api: {{listen: "unix:{tmp}/api.sock"}}
dataplane: {{kind: memory, state_dir: {tmp}/state}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {{type: none}}
    real_servers: [{{address: 192.0.2.11, port: {port}}}]
"""


async def test_child_parses_a_good_file_and_refuses_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, port=80))
    got = await parse_in_child(str(path))
    assert isinstance(got, Config) and got == load(str(path))
    lines = "".join(f"  - {{name: s{i}, vip: 192.0.2.1, port: x}}\n" for i in range(400))
    path.write_text("services:\n" + lines)
    bad = await parse_in_child(str(path))
    assert isinstance(bad, Refused)
    assert len(bad.errors) == MAX_ERRORS + 1 and bad.errors[-1] == "... and 301 more"
    assert all(e.startswith(f"{path}:") for e in bad.errors[:MAX_ERRORS])


async def test_child_past_its_deadline_is_killed(tmp_path: Path) -> None:
    fifo = tmp_path / "slow.yaml"
    os.mkfifo(fifo)
    got = await asyncio.wait_for(parse_in_child(str(fifo), deadline=0.5), BOUND)
    assert got == Refused([f"{fifo}: parsing took longer than 0.5s: abandoned"])
    assert parser_children(os.getpid(), fifo) == []  # killed and reaped


async def test_child_over_its_memory_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    # valid YAML: one 48 MB comment after a good config
    path.write_text(CONFIG.format(tmp=tmp_path, port=80) + "# " + "x" * (48 << 20) + "\n")
    got = await parse_in_child(str(path), memory=64 << 20)
    assert got == Refused([f"{path}: parsing needs more than the 64 MiB a reload may use"])


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, Path]]:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(tmp=tmp_path, port=80))
    d = Daemon(load(str(path)), dataplane=MemoryDataplane())
    await d.start()
    try:
        yield d, path
    finally:
        await d.stop("test teardown")


async def test_slow_reload_blocks_neither_the_api_nor_stop(
    daemon: tuple[Daemon, Path], tmp_path: Path
) -> None:
    d, path = daemon
    digest = d.config.digest
    path.unlink()
    os.mkfifo(path)  # the file is now one nobody writes: the reload's parser waits for ever
    with capture_logs() as logs:
        first = asyncio.create_task(d.reload("test"))
        async with asyncio.timeout(BOUND):
            while not parser_children(os.getpid(), path):  # noqa: ASYNC110 - a process outside the loop
                await asyncio.sleep(0.02)
        conn = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        async with aiohttp.ClientSession(connector=conn) as s:
            async with asyncio.timeout(BOUND):
                async with s.get("http://d/healthz") as r:
                    assert r.status == 200 and (await r.json()) == {"status": "ok"}
                async with s.get("http://d/v1/status") as r:
                    assert r.status == 200 and (await r.json())["config"]["digest"] == digest
                async with s.post("http://d/v1/reload") as r:  # one reload at a time
                    body = await r.json()
                    assert r.status == 409 and body["error"] == "reload in progress"
        assert not first.done() and d.reloads.in_progress
        children = parser_children(os.getpid(), path)
        async with asyncio.timeout(BOUND):  # stop does not wait for the parse
            await d.stop("SIGTERM")
            result = await first
    assert result == {"result": "error", "errors": ["the daemon is stopping"], "digest": digest}
    assert children and parser_children(os.getpid(), path) == []  # the child was killed and reaped
    assert d.config.digest == digest
    busy = [e for e in logs if e["event"] == "config.reload" and e.get("result") == "busy"]
    assert len(busy) == 1 and "already in progress" in busy[0]["reason"]
