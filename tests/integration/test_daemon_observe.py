"""Made to be watched: the real ``hacontrol run`` on nftables in namespaces (root), its stderr a
pipe that ``JOURNAL_STREAM`` names as the journal's, as systemd would connect it.

The topology and helpers are test_daemon_nft's (client, director with the VIP, rs1/rs2 behind a
bridge; removed afterwards). Killing rs2 must show up three ways: a ``<4>`` (warning) line whose
body is the plain JSON ``health.change`` event, its recovery at ``<6>``; /metrics with rs2's
health state ``down`` = 1 and its ``up`` = 0 next to the per-service and per-real-server series
(no connection series: the nftables plane has no per-destination counters); and ``hacontrol
status`` saying for how long it has been down.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon_nft import RS, Scene, config, wait_until
from test_daemon_nft import scene as scene  # the fixture

from hacontrol.cli_api import UnixConnection
from hacontrol.cli_render import render_status

pytestmark = pytest.mark.root

PORT = 8080


class PipeReader:
    """Collects the lines written to a pipe (on a thread, so the daemon never blocks on it)."""

    def __init__(self, fd: int) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.file = os.fdopen(fd, "rb")
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for raw in self.file:
            with self.lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)


def metrics(s: Scene) -> dict[tuple[str, frozenset[Any]], float]:
    conn = UnixConnection(str(s.tmp / "run" / "api.sock"), 5.0)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        text = resp.read().decode()
    finally:
        conn.close()
    return {
        (x.name, frozenset(x.labels.items())): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }


def health(m: dict[tuple[str, frozenset[Any]], float], rs: str, state: str) -> float | None:
    labels = {"service": "web", "real_server": f"{RS[rs]}:{PORT}", "state": state}
    return m.get(("hacontrol_real_server_health", frozenset(labels.items())))


def test_priorities_metrics_and_status(scene: Scene) -> None:
    s = scene
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 2, "rs2": 1}))
    r, w = os.pipe()
    st = os.fstat(w)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    try:
        s.daemon = s.director.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg),
            stdout=w, stderr=w, env=env,
        )  # fmt: skip
    finally:
        os.close(w)  # the daemon holds the write end now: EOF when it exits
    out = PipeReader(r)
    try:
        wait_until(
            lambda: (
                {k: (v["health"], v["kernel_weight"]) for k, v in s.servers().items()}
                == {"rs1": ("up", 2), "rs2": ("up", 1)}
            ),
            "both servers up and in the kernel",
        )
        m = metrics(s)
        assert health(m, "rs1", "up") == 1 and health(m, "rs2", "up") == 1
        web = frozenset({("service", "web")})
        assert m[("hacontrol_service_real_servers_up", web)] == 2
        assert m[("hacontrol_service_in_kernel", web)] == 1
        rs1 = frozenset({("service", "web"), ("real_server", f"{RS['rs1']}:{PORT}")})
        assert m[("hacontrol_real_server_weight", rs1)] == 2
        assert m[("hacontrol_real_server_kernel_weight", rs1)] == 2
        (build,) = [dict(k[1]) for k in m if k[0] == "hacontrol_build_info"]
        assert build["plane"] == "nftables"
        # nftables: connections unknown, so no such series rather than a made-up 0
        assert not [k for k in m if k[0] == "hacontrol_real_server_connections"]

        s.kill_backend("rs2")
        wait_until(lambda: health(metrics(s), "rs2", "down") == 1, "rs2 down in /metrics")
        m = metrics(s)
        assert health(m, "rs2", "up") == 0 and health(m, "rs1", "up") == 1
        assert m[("hacontrol_service_real_servers_up", web)] == 1

        def warning_line() -> list[str]:
            return [x for x in out.snapshot() if x.startswith('<4>{"event": "health.change"')]

        (line,) = wait_until(warning_line, "a <4> health.change line")
        ev = json.loads(line[3:])  # the body is the event as ever, keys and all
        assert ev["to"] == "down" and ev["from"] == "up" and ev["level"] == "warning"
        assert ev["real_server"] == f"{RS['rs2']}:{PORT}" and ev["services"] == ["web"]
        assert ev["reason"] and ev["logger"] == "hacontrol.daemon"
        # every line is prefixed; the routine ones at info
        lines = out.snapshot()
        assert all(x[:1] == "<" and x[2:3] == ">" for x in lines), lines[:5]
        start = [x for x in lines if '"event": "daemon.start"' in x]
        assert start and start[0].startswith("<6>")

        doc = s.status()
        assert doc is not None
        rs2 = next(x for x in doc["services"][0]["real_servers"] if x["address"] == RS["rs2"])
        assert rs2["connections"] is None and rs2["traffic"] is None  # unknown on nftables
        text = render_status(doc)
        assert any(f"{RS['rs2']}:{PORT}" in x and "down " in x for x in text.splitlines()), text

        s.start_backend("rs2")
        wait_until(lambda: health(metrics(s), "rs2", "up") == 1, "rs2 back up in /metrics")
        after_down = out.snapshot().index(line)
        back = wait_until(
            lambda: [json.loads(x[3:]) for x in out.snapshot()[after_down:]
                     if x.startswith("<6>") and '"health.change"' in x and '"to": "up"' in x],
            "the recovery at info",
        )  # fmt: skip
        assert back[0]["real_server"] == f"{RS['rs2']}:{PORT}" and back[0]["from"] == "down"
    finally:
        if s.daemon is not None and s.daemon.poll() is None:
            s.daemon.terminate()
            s.daemon.wait(timeout=10)
        out.thread.join(timeout=10)
        out.file.close()
