"""Drain on the real nftables plane, in namespaces (root): the ``hacontrol run`` process, the CLI.

Topology of test_daemon_nft (client -- director with the VIP -- br0 -- rs1, rs2), but each real
server runs ``HOLD_SERVER``: HTTP for the checks and the short requests, and a long-lived
connection for a client that says ``HOLD`` (it answers every ``PING`` with its name until the
client closes). To pin a held connection on rs1, rs2 is disabled while it opens, then enabled.

In order: drain rs1 with a connection open -> weight 0 at once, every new request goes to rs2,
the held connection keeps working, rs1 stays in the table (draining, 1 connection) until the
connection closes, then leaves it; the drained state survives a restart and a SIGHUP reload;
a drain with a short deadline removes rs1 with its connection still open; a reload that drops
rs1 from the config while a connection is open drains it (weight 0, listed as leaving) instead
of cutting it, and removes it when the connection ends. ``hacontrol diff`` previews that reload.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hacontrol.cli_api import UnixConnection, api_call
from tests.integration import nftlist
from tests.integration.test_daemon_nft import PORT, RS, VIP, Scene, config, scene, wait_until

pytestmark = pytest.mark.root
__all__ = ["scene"]  # the fixture, used by name

HOLD_SERVER = r"""
import asyncio, sys
name, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
async def handle(r, w):
    try:
        first = await asyncio.wait_for(r.readline(), 10)
        if first.startswith(b"HOLD"):
            w.write(f"held {name}\n".encode()); await w.drain()
            while line := await r.readline():
                w.write(f"pong {name}\n".encode()); await w.drain()
        else:
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            body = f"{name}\n".encode()
            w.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def main():
    srv = await asyncio.start_server(handle, host, port)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"""

HOLD_CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=30)
s.sendall(b"HOLD\n")
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
for line in sys.stdin:
    s.sendall(b"PING\n")
    print(f.readline().decode().strip(), flush=True)
s.close()
print("closed", flush=True)
"""

RS1 = f"{RS['rs1']}:{PORT}"
RS2 = f"{RS['rs2']}:{PORT}"


class Held:
    """A long-lived connection through the VIP, from the client namespace."""

    def __init__(self, s: Scene) -> None:
        self.p = s.client.popen(
            sys.executable, "-c", HOLD_CLIENT, VIP,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.first = self.line()

    def line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().strip()

    def ping(self) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write("x\n")
        self.p.stdin.flush()
        return self.line()

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        assert self.line() == "closed"
        self.p.wait(timeout=30)


def cli(s: Scene, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "hacontrol", *args[:1], "--api", s.api, *args[1:]],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def metrics(s: Scene) -> str:
    conn = UnixConnection(s.api.removeprefix("unix:"), 10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def start(s: Scene) -> None:
    with open(s.log, "ab") as log:
        s.daemon = s.director.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg), stdout=log, stderr=log
        )


def stop(s: Scene) -> None:
    assert s.daemon is not None
    s.daemon.send_signal(signal.SIGTERM)
    s.daemon.wait(timeout=30)


def weights(s: Scene) -> dict[str, Any]:
    return {k: v["kernel_weight"] for k, v in s.servers().items()}


def override(s: Scene, name: str) -> dict[str, Any] | None:
    got: dict[str, Any] | None = s.servers().get(name, {}).get("override")
    return got


def overrides(s: Scene) -> dict[str, Any]:
    code, doc = api_call(s.api, "GET", "/v1/overrides", timeout=5)
    assert code == 200
    return doc


def hold_on_rs1(s: Scene) -> Held:
    """A held connection that surely goes to rs1: rs2 is disabled while it opens."""
    cli(s, "disable", "web", RS2)
    wait_until(lambda: weights(s).get("rs2", 0) is None, "rs2 out")
    held = Held(s)
    assert held.first == "held rs1"
    cli(s, "enable", "web", RS2)
    wait_until(lambda: weights(s).get("rs2"), "rs2 back")
    return held


def test_drain_with_open_connections(scene: Scene, tmp_path: Path) -> None:
    s = scene
    for name in RS:  # the hold-capable servers instead of the lab backend
        s.kill_backend(name)
        s.rs[name].popen(sys.executable, "-c", HOLD_SERVER, name, RS[name], str(PORT))
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 1, "rs2": 1}))
    start(s)
    wait_until(lambda: weights(s) == {"rs1": 1, "rs2": 1}, "both up")

    # 1. drain rs1 while a connection to it is open
    held = hold_on_rs1(s)
    cli(s, "drain", "web", RS1, "--deadline", "5m")
    wait_until(lambda: weights(s).get("rs1") == 0, "rs1 at weight 0")
    assert set(s.requests(6)) == {"rs2"}  # new connections avoid it
    assert held.ping() == "pong rs1"  # the open one keeps working
    ov = wait_until(lambda: (o := override(s, "rs1")) and o["drain"]["connections"] == 1 and o,
                    "one connection counted")  # fmt: skip
    assert ov["state"] == "draining" and ov["drain"]["ended"] is None
    assert weights(s)["rs1"] == 0  # still in the table: its connection is open
    assert f"override {RS1}: draining (1 connections" in cli(s, "status")
    series = f'hacontrol_override_connections{{real_server="{RS1}",service="web"}} 1.0'
    assert series in metrics(s)
    held.close()
    wait_until(lambda: weights(s).get("rs1", 0) is None, "rs1 removed once its connection ended")
    assert override(s, "rs1")["state"] == "drained"  # type: ignore[index]
    assert override(s, "rs1")["drain"]["ended"] == "drained"  # type: ignore[index]
    assert set(s.requests(4)) == {"rs2"}

    # 2. survives a restart and a reload
    stop(s)
    start(s)
    wait_until(lambda: s.servers().get("rs2", {}).get("health") == "up", "restarted")
    wait_until(lambda: s.servers().get("rs1", {}).get("health") == "up", "rs1 checked again")
    # the kernel follows the verdicts within a pass (change passes are coalesced)
    wait_until(lambda: weights(s) == {"rs1": None, "rs2": 1}, "rs2 back in the kernel table")
    assert override(s, "rs1")["state"] == "drained"  # type: ignore[index]
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 1, "rs2": 3}))
    assert s.daemon is not None
    s.daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: weights(s) == {"rs1": None, "rs2": 3}, "reloaded, rs1 still drained")
    assert set(s.requests(4)) == {"rs2"}

    # 3. a short deadline ends a drain with the connection still open
    cli(s, "enable", "web", RS1)
    wait_until(lambda: weights(s).get("rs1") == 1, "rs1 enabled")
    held = hold_on_rs1(s)
    cli(s, "drain", "web", RS1, "--deadline", "2s")
    wait_until(lambda: weights(s).get("rs1", 0) is None, "rs1 cut at the deadline")
    assert override(s, "rs1")["drain"]["ended"] == "deadline"  # type: ignore[index]
    held.close()

    # 4. dropped from the config with a connection open: drained, not cut
    cli(s, "clear", "web", RS1)
    wait_until(lambda: weights(s).get("rs1") == 1, "rs1 back after clear")
    held = hold_on_rs1(s)
    new = tmp_path / "new.yaml"
    new.write_text(config(s.tmp, s.table, {"rs2": 3}))
    preview = json.loads(cli(s, "diff", "-c", str(new), "--json"))
    assert preview["leaving"] == [f"tcp/{VIP}:80 -> {RS1}"]
    assert preview["changes"] == [f"update_dest tcp/{VIP}:80 -> {RS1} weight=0 forwarding=nat"]
    s.cfg.write_text(new.read_text())
    s.daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: "rs1" not in s.servers() and overrides(s)["leaving"], "rs1 leaving")
    wait_until(lambda: overrides(s)["leaving"][0]["connections"] == 1, "its connection counted")
    assert set(s.requests(4)) == {"rs2"}
    assert held.ping() == "pong rs1"
    # still there, at weight 0: in the main table's weights, not in the service rule's slots
    items = nftlist.ours(s.director, s.table)
    wmap = next(i["map"] for i in items if i.get("map", {}).get("name") == "weights4")
    assert wmap["table"] == s.table
    mine = {e[0]["concat"][3]: e[1] for e in wmap["elem"] if e[0]["concat"][1:3] == [VIP, 80]}
    assert mine[RS["rs1"]] == 0 and mine[RS["rs2"]] > 0
    web = f"hc svc tcp/{VIP}:80 "
    rules = [i["rule"] for i in items if i.get("rule", {}).get("comment", "").startswith(web)]
    rule = json.dumps(rules)
    assert len(rules) == 1 and RS["rs1"] not in rule and RS["rs2"] in rule
    held.close()
    wait_until(lambda: not overrides(s)["leaving"], "rs1 gone once its connection ended")
    # the removal reaches the kernel with the next change pass (passes are coalesced)
    wait_until(
        lambda: RS["rs2"] in (t := nftlist.text(s.director, s.table)) and RS["rs1"] not in t,
        "rs1 out of the kernel tables",
    )
    assert [e["reason"] for e in s.events("override.drained")] == [
        "drained", "deadline", "drained"]  # fmt: skip
