"""The chaos soak's lab: the lab's HA cluster with an echo service, its API and a VIP observer.

``SoakCluster`` is hacontrol.lab.topology's two-director cluster (client, director-a/b with the
heartbeat link, rs1..rs3; documentation addresses, namespaces) with, for the soak: an ``http``
check on the web service (so a hung real server is detected; a ``tcp`` connect is accepted by the
kernel of a stopped process), a second service ``echo`` (port 7000, the same real servers, each
running bench/chaos_io.py's echo server) for the long-lived connections, weights the soak's good
reloads flip, and a file a bad reload breaks. ``api`` calls a daemon's API from inside its
namespace (http.client on a thread that entered it). ``VipWatch`` polls, on one thread per
director inside its namespace (pyroute2), whether it holds the public VIP, and records every
change on the monotonic clock: the kernel's view of how many directors are active. ``Hold``
runs the long-connection client; ``partition`` cuts or heals a director's heartbeats;
``log_events`` reads the daemons' ``ha.transition`` and ``ha.stall`` lines.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from hacontrol.dataplane.nft_render import NftRenderer
from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.topology import (
    API,
    HB_PORT,
    PORT,
    REAL_SERVERS,
    VIP,
    Cluster,
    Director,
    Timing,
)

HERE = Path(__file__).resolve().parent
ECHO_PORT = 7000
A, B = "director-a", "director-b"
SERVICES = ("web", "echo")
PART_TABLE = "chaos_partition"
PORTS = {"web": PORT, "echo": ECHO_PORT}


class SoakCluster(Cluster):
    def __init__(self, lab: NetnsLab, workdir: Path, timing: Timing) -> None:
        super().__init__(lab, workdir, ha=True, timing=timing)
        self.weights = dict.fromkeys(REAL_SERVERS, 1)
        self.echo: dict[str, subprocess.Popen[Any]] = {}
        self.token = ""
        self._echo_offset: dict[str, int] = {}

    # ------------------------------------------------------------ config

    def config(self, d: Director) -> dict[str, Any]:
        cfg = super().config(d)
        cfg["dataplane"]["kind"] = "nftables"
        web = cfg["services"][0]
        web["check"].update(type="http", path="/", expect_status=[200])
        for rs in web["real_servers"]:
            name = next(n for n, a in REAL_SERVERS.items() if a == rs["address"])
            rs["weight"] = self.weights[name]
        echo = {**web, "name": "echo", "port": ECHO_PORT,
                "check": {**web["check"], "type": "tcp"},
                "real_servers": [{**rs, "port": ECHO_PORT}
                                 for rs in web["real_servers"]]}  # fmt: skip
        for k in ("path", "expect_status"):
            echo["check"].pop(k, None)
        cfg["services"].append(echo)
        return cfg

    def write_all(self) -> None:
        for name in self.directors:
            self.write_config(name)
        self.token = (self.workdir / "api.token").read_text().strip()

    def write_bad(self, name: str, flaw: str) -> None:
        cfg = self.config(self.directors[name])
        path = self.config_path(name)
        if flaw == "yaml":
            path.write_text(yaml.safe_dump(cfg, sort_keys=False) + "services: [\n  {name: x\n")
            return
        if flaw == "scheduler":
            cfg["services"][0]["scheduler"] = "no-such-scheduler"
        else:
            cfg["services"][1]["port"] = 70000
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # ------------------------------------------------------------ real servers

    def start_echo(self, rs: str) -> None:
        log = open(self.workdir / f"{rs}.echo.log", "a")  # noqa: SIM115 - handed to the child
        with log:
            self._echo_offset[rs] = log.tell()
            self.echo[rs] = self.ns(rs).popen(
                sys.executable, str(HERE / "chaos_io.py"), "echo", "--listen",
                f"{REAL_SERVERS[rs]}:{ECHO_PORT}", "--name", rs, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_echo(self, rs: str, timeout: float = 60.0) -> None:
        log, deadline = self.workdir / f"{rs}.echo.log", time.monotonic() + timeout
        start = self._echo_offset.get(rs, 0)  # the log is appended to by every start
        while f"{rs}: echo listening on" not in log.read_text(errors="replace")[start:]:
            if self.echo[rs].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{rs}'s echo server did not start")
            time.sleep(0.05)

    def start_servers(self, rs: str) -> None:
        if rs not in self.backends:
            self.start_backend(rs)
        self.start_echo(rs)
        self.wait_backend(rs)
        self.wait_echo(rs)

    def server_pids(self, rs: str) -> list[int]:
        return [p.pid for p in (self.backends.get(rs), self.echo.get(rs)) if p is not None]

    def kill_servers(self, rs: str) -> None:
        self.stop_backend(rs, signal.SIGKILL)
        p = self.echo.pop(rs)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def signal_servers(self, rs: str, sig: int) -> None:
        for pid in self.server_pids(rs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    # ------------------------------------------------------------ daemons

    def signal_daemon(self, name: str, sig: int) -> None:
        p = self.daemons.get(name)
        if p is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)

    def api(self, name: str, method: str, path: str, body: dict[str, Any] | None = None,
            timeout: float = 5.0) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """One API call to ``name``'s daemon; (0, {"error": ...}) when it does not answer."""
        host, _, port = API.rpartition(":")

        def call() -> tuple[int, dict[str, Any]]:
            conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
            try:
                headers = {"Authorization": f"Bearer {self.token}"} if method != "GET" else {}
                data = None if body is None else json.dumps(body).encode()
                if data is not None:
                    headers["Content-Type"] = "application/json"
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                try:
                    doc = json.loads(raw) if raw else {}
                except ValueError:
                    doc = {"text": raw.decode(errors="replace")[:200]}
                return resp.status, doc if isinstance(doc, dict) else {"doc": doc}
            except (OSError, http.client.HTTPException) as e:
                return 0, {"error": f"{type(e).__name__}: {e}"}
            finally:
                conn.close()

        return self.ns(name).call(call)

    def role(self, name: str) -> str | None:
        code, doc = self.api(name, "GET", "/v1/status", timeout=2.0)
        return str(doc.get("role")) if code == 200 else None

    def serving(self, name: str) -> bool:
        """``name`` is active with every real server of both services up and weighted."""
        code, doc = self.api(name, "GET", "/v1/status", timeout=2.0)
        if code != 200 or doc.get("role") != "active":
            return False
        rss = [rs for s in doc.get("services", []) for rs in s.get("real_servers", [])]
        return len(rss) == len(SERVICES) * len(REAL_SERVERS) and all(
            rs.get("health") == "up" and rs.get("kernel_weight") for rs in rss
        )

    def table_rules(self, name: str) -> int:
        """How many rules ``name``'s nftables tables hold, the main ``hacontrol`` and the nft
        plane's service tables ``hacontrol_<i>of<n>`` (0: none, or no table). A flush empties the
        chains but keeps the sets, so the rules are what tells it repaired; a flush or delete of
        the main table leaves the service tables' rules, the total still drops."""
        fam = self.nft_table_family(name)
        if fam is None:
            return 0
        r = self.ns(name).run("nft", "-j", "list", "ruleset", fam, check=False)
        owns = NftRenderer("hacontrol").owns
        with contextlib.suppress(ValueError, KeyError):
            items = json.loads(r.stdout)["nftables"]
            return sum(1 for i in items if "rule" in i and owns(i["rule"]["table"]))
        return 0

    def nft_table_family(self, name: str) -> str | None:
        r = self.ns(name).run("nft", "-j", "list", "tables", check=False)
        with contextlib.suppress(ValueError, KeyError):
            for item in json.loads(r.stdout)["nftables"]:
                t = item.get("table")
                if t and t.get("name") == "hacontrol":
                    return str(t["family"])
        return None


class VipWatch:
    """Who holds the public VIP, per director, from the kernel (pyroute2 in its namespace)."""

    def __init__(self, c: Cluster, period: float = 0.02) -> None:
        self.c, self.period = c, period
        self.changes: list[tuple[float, str, bool]] = []  # (t, director, holds)
        self.now: dict[str, bool] = dict.fromkeys(c.directors, False)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(d,), daemon=True)
                        for d in c.directors]  # fmt: skip
        self.errors: list[str] = []

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, name: str) -> None:
        from pyroute2 import IPRoute

        try:
            self.c.ns(name).enter()
            with IPRoute() as ipr:
                while not self._stop.is_set():
                    holds = any(a.get_attr("IFA_ADDRESS") == VIP for a in ipr.get_addr(family=2))
                    t = time.monotonic()
                    with self._lock:
                        if holds != self.now[name] or not any(x[1] == name for x in self.changes):
                            self.now[name] = holds
                            self.changes.append((t, name, holds))
                    self._stop.wait(self.period)
        except Exception as e:
            self.errors.append(f"{name}: {type(e).__name__}: {e}")

    def holders(self) -> set[str]:
        with self._lock:
            return {n for n, h in self.now.items() if h}

    def counts(self) -> list[tuple[float, int]]:
        """(time, number of holders) at every change, from when both directors were seen."""
        with self._lock:
            changes = sorted(self.changes)
        state: dict[str, bool] = {}
        out: list[tuple[float, int]] = []
        for t, name, holds in changes:
            state[name] = holds
            if len(state) == len(self.c.directors):
                n = sum(state.values())
                if not out or out[-1][1] != n:
                    out.append((t, n))
        return out

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=5)


class Hold:
    """bench/chaos_io.py ``hold`` in the client namespace; its JSON lines collected on a thread."""

    def __init__(self, c: SoakCluster, conns: int, duration: float) -> None:
        self.lines: list[dict[str, Any]] = []
        self.proc = c.client.popen(
            sys.executable, str(HERE / "chaos_io.py"), "hold", "--target", f"{VIP}:{ECHO_PORT}",
            "--conns", str(conns), "--interval", "1.0", "--timeout", "2.0", "--duration",
            str(duration), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                continue

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.thread.join(timeout=5)


def partition(c: SoakCluster, name: str, on: bool) -> None:
    """Drop the heartbeat port both ways in ``name``'s namespace (a table of our own), or heal."""
    if on:
        drop = f"udp dport {HB_PORT} drop;"
        rules = (f"table inet {PART_TABLE} {{\n"
                 f"  chain i {{ type filter hook input priority -400; {drop} }}\n"
                 f"  chain o {{ type filter hook output priority -400; {drop} }}\n"
                 "}\n")  # fmt: skip
        path = c.workdir / f"{PART_TABLE}.nft"
        path.write_text(rules)
        c.ns(name).run("nft", "-f", str(path))
    else:
        c.ns(name).run("nft", "delete", "table", "inet", PART_TABLE, check=False)


def log_events(c: SoakCluster, mono_of_wall: float) -> list[tuple[float, str, str, str]]:
    """Each daemon's ``ha.transition`` and ``ha.stall`` lines: (monotonic time, node, event,
    new role or the stall's gap)."""
    out = []
    for d in (A, B):
        for line in c.log_path(d).read_text(errors="replace").splitlines():
            if '"ha.transition"' not in line and '"ha.stall"' not in line:
                continue
            try:
                e = json.loads(line)
                stamp = e["timestamp"].replace("Z", "+00:00")
                wall = datetime.fromisoformat(stamp).timestamp()
            except (ValueError, KeyError):
                continue
            what = "transition" if e["event"] == "ha.transition" else "stall"
            detail = str(e.get("to_role") if what == "transition" else e.get("gap"))
            out.append((wall - mono_of_wall, d, what, detail))
    return sorted(out)
