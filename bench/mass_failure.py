"""Mass failure at scale: 1,000 real servers die at once; when does the kernel table show it?

A real ``hacontrol run`` daemon (nftables plane) in a ``director`` namespace serves S services
x P real servers (default 100 x 10 = 1,000): service i's real servers are 192.0.2.(20+i) on ports
8001..8000+P, all on the ``rs`` namespace's interface and all served by ONE asyncio process
(one listening socket per real server), TCP checks every ``--interval`` with ``--fall``. The
process is killed: every real server dies at the same moment. A poller process in the director
namespace (libnftables in-process, a filtered ``list set`` every ~1 ms, bounded in count and
time; ``bench/event_to_kernel.py``'s) waits until every service is in the ``nodest4`` set. The
figure is that moment minus the kill (wall clock, same host), printed beside the detection bound
``interval x fall`` (+ timeout), with when the daemon logged the first and the last
``health.change`` to down, and the ``dataplane.apply`` passes (actions each) that carried the
removals. Then the listener is started again, everything comes back up, and the next run starts.

    python3 bench/mass_failure.py [--services 100] [--per 10] [--interval 0.5] [--fall 2]
                                  [--runs 3] [--json out.json]

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
from pathlib import Path
from typing import Any

from bench.event_to_kernel import epoch, events, poll, seen_at, wait
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

TABLE = "hcbench"  # the table the pollers of bench/event_to_kernel.py read

# one process, one listening socket per real server; accepts and closes at once (an epoll loop:
# asyncio streams fell behind 2,000 checks a second on 2 shared vCPUs and ran out of descriptors)
LISTEN = r"""
import resource, select, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
per, socks = int(sys.argv[1]), {}
ep = select.epoll()
for a in sys.argv[2:]:
    for p in range(per):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, 8001 + p)); s.listen(256); s.setblocking(False)
        socks[s.fileno()] = s; ep.register(s.fileno(), select.EPOLLIN)
print("ready", len(socks), flush=True)
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    for fd, _ in ep.poll(1.0):
        try:
            while True:
                socks[fd].accept()[0].close()
        except BlockingIOError:
            pass
"""


def config(tmp: Path, addrs: list[str], per: int, interval: float, fall: int) -> str:
    timeout = min(0.3, interval * 0.6)
    check = (f"check: {{type: tcp, interval: {int(interval * 1000)}ms, "
             f"timeout: {int(timeout * 1000)}ms, rise: 1, fall: {fall}}}")  # fmt: skip
    lines = [
        "node: {name: mass}",
        f'api: {{listen: "unix:{tmp}/api.sock"}}',
        f"dataplane: {{kind: nftables, nft_table: {TABLE}, state_dir: {tmp}/state, "
        "resync_interval: 600s, keep_on_stop: false}",
        "logging: {level: info, format: json}",
        "services:",
    ]
    for i, a in enumerate(addrs):
        rs = ", ".join(f"{{address: {a}, port: {8001 + p}}}" for p in range(per))
        lines.append(
            f"  - {{name: s{i}, vip: 198.51.100.10, port: {1000 + i}, scheduler: rr, "
            f"{check}, real_servers: [{rs}]}}"
        )
    return "\n".join(lines) + "\n"


def start_servers(rs: Ns, addrs: list[str], per: int) -> subprocess.Popen[str]:
    proc = rs.popen(sys.executable, "-c", LISTEN, str(per), *addrs, stdout=subprocess.PIPE,
                    text=True)  # fmt: skip
    assert proc is not None and proc.stdout is not None
    if not proc.stdout.readline().startswith("ready"):
        raise SystemExit("the listener did not start")
    return proc


def ups(log: Path) -> int:
    """Real servers whose last health change was to up."""
    last: dict[str, str] = {}
    for e in events(log, "health.change"):
        last[str(e.get("target"))] = str(e.get("to"))
    return sum(1 for v in last.values() if v == "up")


def say(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def all_down(log: Path, since: int, n: int) -> list[dict[str, Any]] | None:
    got = [e for e in events(log, "health.change")[since:] if e.get("to") == "down"]
    return got if len(got) >= n else None


def one_run(director: Ns, rs: Ns, log: Path, addrs: list[str], per: int) -> dict[str, Any]:
    n = len(addrs) * per
    servers = start_servers(rs, addrs, per)
    try:
        wait_tcp(director, addrs[-1], 8000 + per)
        wait(lambda: ups(log) >= n, f"{n} real servers up", 180)
        say(f"{n} real servers up")
        seen_at(poll(director, f"count:{n}", args=("map:weights4",), limit=120))  # all in the table
        say("all in the table")
        wait(lambda: len(events(log, "dataplane.apply")) > 0, "a pass", 60)
        time.sleep(1.0)  # let the last up passes finish
        n_changes = len(events(log, "health.change"))
        n_applies = len(events(log, "dataplane.apply"))
        watcher = poll(director, f"count:{len(addrs)}", args=("nodest4",), limit=120)
        time.sleep(0.3)  # the poller is polling
        t0 = time.time()
        servers.kill()  # every real server dies at once
        servers.wait(10)
        at = seen_at(watcher)
        say(f"killed: the kernel shows it after {at - t0:.3f} s")
        downs = wait(lambda: all_down(log, n_changes, n), "every health.change to down", 60)
        passes = events(log, "dataplane.apply")[n_applies:]
        times = sorted(epoch(e["timestamp"]) - t0 for e in downs)
        return {
            "kill_to_kernel_s": round(at - t0, 3),
            "first_down_s": round(times[0], 3),
            "last_down_s": round(times[-1], 3),
            "passes": [p.get("actions") for p in passes],
            "scopes": sorted({str(p.get("scope")) for p in passes}),
        }
    finally:
        servers.kill()
        servers.wait(10)


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    addrs = [f"192.0.2.{20 + i}" for i in range(args.services)]
    with NetnsLab() as lab:
        director, rs = lab.add("director", forward=True), lab.add("rs")
        lab.link(director, "eth1", rs, "eth0")
        director.addr("eth1", "192.0.2.1/24")
        for a in addrs:
            rs.addr("eth0", f"{a}/24")
        rs.route("198.51.100.0/24", "192.0.2.1")
        director.addr("lo", "198.51.100.10/32")
        cfg, log = tmp / "mass.yaml", tmp / "mass.log"
        cfg.write_text(config(tmp, addrs, args.per, args.interval, args.fall))
        with open(log, "wb") as out:
            daemon = director.popen(sys.executable, "-m", "hacontrol", "run", "-c", str(cfg),
                                    stdout=out, stderr=out)  # fmt: skip
        assert daemon is not None
        try:
            runs = [one_run(director, rs, log, addrs, args.per) for _ in range(args.runs)]
        except SystemExit:
            print(log.read_text()[-4000:], file=sys.stderr)  # what the daemon last said
            raise
        finally:
            daemon.terminate()
            daemon.wait(60)
    kill = [r["kill_to_kernel_s"] for r in runs]
    return {
        "real_servers": args.services * args.per,
        "services": args.services,
        "interval_s": args.interval,
        "fall": args.fall,
        "bound_s": round(args.interval * args.fall, 3),
        "kill_to_kernel_median_s": round(statistics.median(kill), 3),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--per", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--fall", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, nftables)")
    if not 1 <= args.services <= 200:
        raise SystemExit("--services: 1-200 (one address each in 192.0.2.20-219)")
    with tempfile.TemporaryDirectory(prefix="hcmass-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result), flush=True)
    print(
        f"{result['real_servers']} real servers killed: kernel shows all after "
        f"{result['kill_to_kernel_median_s']:.3f} s (median of {args.runs}; "
        f"interval x fall = {result['bound_s']:.3f} s)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
