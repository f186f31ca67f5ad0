"""In the guest: connection counts and traffic of a real server, from the real IPVS table, in
/metrics and the status (the daemon reads IPVS's destination counters over netlink).

The guest's root namespace is a NAT director (ipvslab.Director) with two real servers; the
backends are told to hold every connection open without answering (SIGUSR1), and a client holds
one connection to the VIP: its real server shows one active connection in /metrics, in
``GET /v1/status`` and in ``hacontrol status``, as ``ipvsadm -Ln`` (parsed independently) does,
with the bytes the client sent counted in; when the client closes it, the connection turns
inactive. Everything is removed afterwards.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ipvslab import Director, ipvsadm, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.cli_render import render_status
from hacontrol.lab.netns import NetnsLab

pytestmark = pytest.mark.ipvs

API = "127.0.0.1:9481"
HOLD = r"""
import select, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=30)
s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # a request never finished: the server waits
print("connected", flush=True)
select.select([sys.stdin], [], [], 300)  # until the test closes stdin (bounded)
s.close()
"""


def config(state_dir: Path, servers: list[str]) -> str:
    rs = "\n".join(f"      - {{address: {a}, port: 8080}}" for a in servers)
    return f"""
node: {{name: guest-metrics}}
api: {{listen: "{API}"}}
dataplane: {{kind: ipvs, resync_interval: 5s, keep_on_stop: false, state_dir: {state_dir}}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: {Director.VIP}
    port: 80
    scheduler: rr
    check: {{type: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}}
    real_servers:
{rs}
"""


def get(path: str) -> bytes:
    with urllib.request.urlopen(f"http://{API}{path}", timeout=30) as r:
        return r.read()  # type: ignore[no-any-return]


def metric(name: str, **labels: str) -> dict[str, float]:
    """real_server -> value of ``name`` with ``labels`` (every real server of service web)."""
    out = {}
    for fam in text_string_to_metric_families(get("/metrics").decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.labels["real_server"]] = s.value
    return out


def ipvsadm_conns() -> dict[str, tuple[int, int]]:
    """real server -> (ActiveConn, InActConn) as ``ipvsadm -Ln`` shows them."""
    dest = re.compile(r"^\s+->\s+(\S+)\s+\w+\s+-?\d+\s+(\d+)\s+(\d+)")
    return {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in map(dest.match, ipvsadm("-Ln").splitlines())
        if m
    }


def ipvsadm_stats() -> dict[str, tuple[int, ...]]:
    """real server -> (Conns, InPkts, OutPkts, InBytes, OutBytes), ``ipvsadm -Ln --stats``."""
    dest = re.compile(r"^\s+->\s+(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")
    return {
        m.group(1): tuple(int(x) for x in m.groups()[1:])
        for m in map(dest.match, ipvsadm("-Ln", "--stats", "--exact").splitlines())
        if m
    }


@pytest.fixture(scope="module")
def director(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Director]:
    ipvsadm("-C")
    work = tmp_path_factory.mktemp("metrics")
    d = Director(NetnsLab(), 2, work)
    cfg = work / "hacontrol.yaml"
    log = work / "daemon.log"
    daemon: subprocess.Popen[Any] | None = None
    try:
        cfg.write_text(config(work / "state", d.addresses))
        for i in range(2):
            d.start_backend(i)
        with open(log, "w") as f:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "hacontrol", "run", "-c", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        yield d
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(timeout=30)
        d.close()
        ipvsadm("-C")
        print(f"--- daemon log\n{log.read_text()[-4000:]}" if log.exists() else "")


def test_active_connection_through_the_vip(director: Director) -> None:
    d = director
    names = [f"{a}:8080" for a in d.addresses]

    def both_in_kernel() -> bool:
        try:
            return set(metric("hacontrol_real_server_kernel_weight")) == set(names)
        except OSError:  # the API is not listening yet
            return False

    wait_for(both_in_kernel, 120, "both real servers in the kernel, seen in /metrics")
    assert metric("hacontrol_real_server_connections", state="active") == dict.fromkeys(names, 0)
    for i in range(2):  # the backends now hold every connection open, unanswered
        d.procs[i].send_signal(signal.SIGUSR1)
    client = d.client.popen(
        sys.executable, "-c", HOLD, Director.VIP,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        busy = wait_for(
            lambda: [n for n, v in metric("hacontrol_real_server_connections",
                                          state="active").items() if v == 1],
            60, "one active connection in /metrics",
        )  # fmt: skip
        (rs,) = busy
        assert ipvsadm_conns()[rs][0] == 1  # the kernel's own view agrees

        def row() -> dict[str, Any]:
            doc = json.loads(get("/v1/status"))
            (r,) = [r for r in doc["services"][0]["real_servers"]
                    if f"{r['address']}:{r['port']}" == rs]  # fmt: skip
            return r  # type: ignore[no-any-return]

        def traffic_agrees() -> tuple[int, ...] | None:
            """The traffic counters equal ipvsadm's (the kernel folds its per-CPU counters in
            every 2 s, so the first bytes show up after a while)."""
            t = row()["traffic"]
            mine = tuple(t[k] for k in ("connections", "packets_in", "packets_out", "bytes_in",
                                        "bytes_out"))  # fmt: skip
            return mine if mine == ipvsadm_stats()[rs] and t["bytes_in"] > 0 else None

        conns, _pin, _pout, bytes_in, _bout = wait_for(
            traffic_agrees, 60, "traffic counters that agree with ipvsadm --stats"
        )
        assert conns >= 1
        assert metric("hacontrol_real_server_bytes_total", direction="in")[rs] >= bytes_in
        assert metric("hacontrol_real_server_scheduled_connections_total")[rs] >= 1
        doc = json.loads(get("/v1/status"))
        assert row()["connections"]["active"] == 1
        line = next(x for x in render_status(doc).splitlines() if x.strip().startswith(rs))
        assert re.search(r"\s1/\d+\s", line), line
    finally:
        assert client.stdin is not None
        client.stdin.close()  # the client closes its connection and exits
        client.wait(timeout=60)
    wait_for(
        lambda: metric("hacontrol_real_server_connections", state="active")[rs] == 0
        and metric("hacontrol_real_server_connections", state="inactive")[rs] >= 1,
        60, "the closed connection to turn inactive",
    )  # fmt: skip
    for i in range(2):
        d.procs[i].send_signal(signal.SIGUSR1)
