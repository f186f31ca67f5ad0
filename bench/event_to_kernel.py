"""Event to kernel: from a real server's ``health.change`` to the nftables table showing it.

A real ``hacontrol run`` daemon (nftables plane) in a network namespace serves S services x 10
real servers (192.0.2.1-10:8080, each a TCP listener on the namespace's loopback, TCP
checks, shared by every service so 10 checks serve all) plus one extra service whose only real
server (192.0.2.99:8080) is killed. A poller in a separate process polls the small ``nodest4`` set
of our table (``nft -j list set``, bounded in count and time) until the extra service appears
there (no usable destination), and prints when. The figure is that time minus the timestamp of the
daemon's ``health.change`` log line (both wall clock, same host). The server is restarted and the
next run waits for it to leave the set. Runs with S = 10 and S = 1,000 in one invocation and
prints the ratio; also the daemon's RSS (VmRSS) once the table is loaded, and how many
``dataplane.apply`` passes the event took and their scope.

    python3 bench/event_to_kernel.py [--sizes 10,1000] [--runs 5] [--json out.json]

As root; every namespace and process is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

RS = [f"192.0.2.{i}" for i in range(1, 11)]
VICTIM = "192.0.2.99"
PORT = 8080
TABLE = "hcbench"

LISTEN = r"""
import socket, sys, time
socks = []
for a in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, 8080)); s.listen(512); socks.append(s)
print("ready", flush=True)
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                c, _ = s.accept(); c.close()
        except BlockingIOError:
            pass
    time.sleep(0.01)
"""

POLL = r"""
import json, subprocess, sys, time
table, want, limit = sys.argv[1], sys.argv[2] == "present", float(sys.argv[3])
key = [6, "198.51.100.250", 9999]
deadline = time.monotonic() + limit
polls = 0
while time.monotonic() < deadline and polls < 100000:
    polls += 1
    r = subprocess.run(["nft", "-j", "-p", "list", "set", "inet", table, "nodest4"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        elems = [e for i in json.loads(r.stdout)["nftables"] if "set" in i
                 for e in i["set"].get("elem", [])]
        if (any(e.get("concat") == key for e in elems if isinstance(e, dict))) == want:
            print(json.dumps({"at": time.time(), "polls": polls}), flush=True)
            sys.exit(0)
print(json.dumps({"at": None, "polls": polls}), flush=True)
sys.exit(1)
"""


def config(tmp: Path, services: int) -> str:
    lines = [
        "node: {name: bench}",
        f'api: {{listen: "unix:{tmp}/api.sock"}}',
        f"dataplane: {{kind: nftables, nft_table: {TABLE}, state_dir: {tmp}/state, "
        "resync_interval: 30s, keep_on_stop: false}",
        "logging: {level: info, format: json}",
        "services:",
    ]
    check = "check: {type: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 1}"
    for i in range(services):
        lines += [
            f"  - {{name: s{i}, vip: 198.51.100.{1 + i // 250}, port: {1000 + i % 250}, "
            f"scheduler: wrr, {check}, real_servers: ["
            + ", ".join(f"{{address: {a}, port: {PORT}}}" for a in RS)
            + "]}",
        ]
    lines.append(
        f"  - {{name: victim, vip: 198.51.100.250, port: 9999, {check}, "
        f"real_servers: [{{address: {VICTIM}, port: {PORT}}}]}}"
    )
    return "\n".join(lines) + "\n"


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") == name:
            out.append(ev)
    return out


def wait(cond: Any, what: str, limit: float) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out after {limit}s waiting for {what}")


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def poll(ns: Ns, state: str) -> subprocess.Popen[str]:
    return ns.popen(sys.executable, "-c", POLL, TABLE, state, "30", stdout=subprocess.PIPE,
                    text=True)  # fmt: skip


def measure(services: int, runs: int, tmp: Path) -> dict[str, Any]:
    with NetnsLab() as lab:
        ns = lab.add("dir", forward=True)
        for a in [*RS, VICTIM, "198.51.100.250"]:
            ns.addr("lo", f"{a}/32")
        steady = ns.popen(sys.executable, "-c", LISTEN, *RS, stdout=subprocess.PIPE, text=True)
        for a in RS:
            wait_tcp(ns, a, PORT)
        cfg, log = tmp / f"hc{services}.yaml", tmp / f"hc{services}.log"
        cfg.write_text(config(tmp, services))
        with open(log, "wb") as out:
            daemon = ns.popen(sys.executable, "-m", "hacontrol", "run", "-c", str(cfg),
                              stdout=out, stderr=out)  # fmt: skip
        assert daemon is not None and steady is not None
        figures: list[float] = []
        passes: list[list[str]] = []
        try:
            start = time.monotonic()
            wait(lambda: len(events(log, "dataplane.apply")) > 0, "the first load", 300)
            # every real server up and in the table
            wait(lambda: len(events(log, "health.change")) >= len(RS), "checks up", 120)
            load = time.monotonic() - start
            for _ in range(runs):
                victim = ns.popen(sys.executable, "-c", LISTEN, VICTIM, stdout=subprocess.PIPE,
                                  text=True)  # fmt: skip
                assert victim is not None and victim.stdout is not None
                victim.stdout.readline()
                gone = poll(ns, "absent")
                assert gone.stdout is not None
                json.loads(gone.stdout.readline())
                gone.wait(10)
                time.sleep(0.5)
                n_changes = len(events(log, "health.change"))
                n_applies = len(events(log, "dataplane.apply"))
                watcher = poll(ns, "present")
                time.sleep(0.2)  # the poller is polling
                victim.kill()
                victim.wait(10)
                assert watcher.stdout is not None
                seen = json.loads(watcher.stdout.readline())
                watcher.wait(10)
                if seen["at"] is None:
                    raise SystemExit("the kernel never showed the change")
                change = wait(
                    lambda n=n_changes: [
                        e for e in events(log, "health.change")[n:] if e.get("to") == "down"
                    ],
                    "health.change",
                    10,
                )[0]
                figures.append(seen["at"] - epoch(change["timestamp"]))
                passes.append(
                    [
                        f"{e.get('scope')}:{e.get('actions')}"
                        for e in events(log, "dataplane.apply")[n_applies:]
                    ]
                )
            rss = rss_mb(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(60)
            steady.kill()
        return {
            "services": services,
            "destinations": services * len(RS) + 1,
            "first_load_s": round(load, 2),
            "event_to_kernel_s": [round(f, 4) for f in figures],
            "median_s": round(statistics.median(figures), 4),
            "rss_mb": round(rss, 1),
            "passes": passes,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, nftables)")
    results = []
    with tempfile.TemporaryDirectory(prefix="hcbench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(size, args.runs, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    base = results[0]["median_s"]
    for r in results[1:]:
        ratio = r["median_s"] / base if base else float("inf")
        print(f"{r['services']} services / {results[0]['services']} services: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
