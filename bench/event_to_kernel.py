"""Event to kernel: from a health change, and from an API drain, to the nftables table showing it.

A real ``hacontrol run`` daemon (nftables plane) in a network namespace serves S services x 10
real servers (192.0.2.1-10:8080, each a TCP listener on the namespace's loopback, TCP
checks, shared by every service so 10 checks serve all) plus one extra service ``victim`` whose
only real server is 192.0.2.99:8080. A poller in a separate process polls the small ``nodest4``
set of our table (bounded in count and time) until ``victim`` appears there (no usable
destination) and prints when. By default the poller lists the set through libnftables in its own
process (~0.1 ms a poll, one every ~1 ms); ``--poller nft`` runs ``nft -j list set`` each time
(the first version's poller: a fork + exec, 10-20 ms a poll on a busy machine). Each run:

* API drain: ``POST /v1/overrides`` drain of the victim's real server; the figure is from just
  before the request to the kernel showing it (its only real server at weight 0: no usable
  destination). Then ``clear``, and wait for the set to lose it again.
* health change: the victim's listener is killed; the figure is from the daemon's
  ``health.change`` log line to the kernel (both wall clock, same host); also from the kill
  (detection by the 200 ms checks included).

For both, also the daemon's own view (microsecond log timestamps, no poller in between): to its
``dataplane.apply`` line, which the pass writes once the kernel acknowledged every message (the
plane's confirmation), from the ``health.change`` line and from just before the request.

Runs with S = 10 and S = 1,000 in one invocation and prints the ratios; also the daemon's RSS
(VmRSS) once the table is loaded, and the ``dataplane.apply`` passes of each event (scope, ops).

    python3 bench/event_to_kernel.py [--sizes 10,1000] [--runs 5] [--poller lib|nft]
                                     [--json out.json]

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

from hacontrol.cli_api import api_call
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp
from hacontrol.lab.scenario import log_events

Popen = subprocess.Popen[str]

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

POLL_NFT = r"""
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

# the same poll through libnftables in the poller's process: a filtered ``list set`` costs
# ~0.1 ms at either size, so the figure's resolution is ~1 ms (the pause between polls), not
# a fork + exec of nft (10-20 ms on this machine). argv: table, present|absent|count:N, limit,
# set name (nodest4), and for present/absent the element text (tcp . 198.51.100.250 . 9999)
POLL = r"""
import ctypes, json, sys, time
table, want, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
name = sys.argv[4] if len(sys.argv) > 4 else "nodest4"
key = sys.argv[5] if len(sys.argv) > 5 else "6 . 198.51.100.250 . 9999"
lib = ctypes.CDLL("libnftables.so.1")
lib.nft_ctx_new.restype = ctypes.c_void_p
lib.nft_ctx_buffer_output.argtypes = lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
ctx = lib.nft_ctx_new(0)
lib.nft_ctx_buffer_output(ctx); lib.nft_ctx_buffer_error(ctx)
lib.nft_ctx_output_set_flags(ctx, 16 | 128)  # JSON, protocols as numbers
kind, _, name = name.rpartition(":")  # "map:weights4" lists a map
cmd = f"list {kind or 'set'} inet {table} {name}".encode()
def norm(e):
    if isinstance(e, dict) and "concat" in e:
        return " . ".join(str(x) for x in e["concat"])
    return str(e)
deadline = time.monotonic() + limit
polls = 0
while time.monotonic() < deadline and polls < 200000:
    polls += 1
    if lib.nft_run_cmd_from_buffer(ctx, cmd) == 0:
        out = lib.nft_ctx_get_output_buffer(ctx) or b"{}"
        elems = [norm(e) for i in json.loads(out).get("nftables", [])
                 for e in (i.get("set") or i.get("map") or {}).get("elem", [])]
        if want.startswith("count:"):
            done = len(elems) >= int(want[6:])
        else:
            done = (key in elems) == (want == "present")
        if done:
            print(json.dumps({"at": time.time(), "polls": polls, "n": len(elems)}), flush=True)
            sys.exit(0)
    time.sleep(0.001)
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
    """The daemon's log events named ``name`` (``lab.scenario.log_events``)."""
    return log_events(log, name)


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


POLLERS = {"lib": POLL, "nft": POLL_NFT}


def poll(
    ns: Ns, state: str, *, poller: str = "lib", args: tuple[str, ...] = (), limit: float = 30
) -> Popen:
    """A poller child in ``ns`` waiting for the victim's ``nodest4`` element to be ``state``
    (present/absent; ``count:N`` with ``args`` = (set name, ``map:NAME`` for a map) for the lib
    poller)."""
    return ns.popen(sys.executable, "-c", POLLERS[poller], TABLE, state, str(limit), *args,
                    stdout=subprocess.PIPE, text=True)  # fmt: skip


def seen_at(watcher: Popen) -> float:
    """When the poller saw what it waited for (wall clock)."""
    assert watcher.stdout is not None
    seen = json.loads(watcher.stdout.readline())
    watcher.wait(10)
    if seen["at"] is None:
        raise SystemExit("the kernel never showed the change")
    return float(seen["at"])


def api(tmp: Path, action: str) -> None:
    """One override request on the victim's real server (POST /v1/overrides)."""
    body = {"action": action, "service": "victim", "real_server": f"{VICTIM}:{PORT}"}
    code, doc = api_call(f"unix:{tmp}/api.sock", "POST", "/v1/overrides", body, timeout=10)
    if code != 200:
        raise SystemExit(f"{action}: HTTP {code}: {doc}")


def applied(log: Path, since: int) -> list[str]:
    return [f"{e.get('scope')}:{e.get('ops')}" for e in events(log, "dataplane.apply")[since:]]


def downs(log: Path, since: int) -> list[dict[str, Any]]:
    return [e for e in events(log, "health.change")[since:] if e.get("to") == "down"]


def acked_at(log: Path, since: int) -> float:
    """When the first ``dataplane.apply`` line after ``since`` was written: the pass logs it once
    the kernel acknowledged every message (the plane's confirmation; microsecond timestamps)."""
    return epoch(events(log, "dataplane.apply")[since]["timestamp"])


def one_run(
    ns: Ns, log: Path, tmp: Path, poller: str
) -> tuple[float, float, float, list[Any], tuple[float, float]]:
    """One drain and one health change of the victim: (drain s, health.change to kernel s,
    kill to kernel s, their passes, (drain, health.change) to the kernel's ack s)."""
    victim = ns.popen(sys.executable, "-c", LISTEN, VICTIM, stdout=subprocess.PIPE, text=True)
    assert victim is not None and victim.stdout is not None
    try:
        victim.stdout.readline()
        seen_at(poll(ns, "absent", poller=poller))  # up and usable again
        time.sleep(0.5)
        # the API drain: from the request to the kernel (weight 0: no usable destination)
        n_applies = len(events(log, "dataplane.apply"))
        watcher = poll(ns, "present", poller=poller)
        time.sleep(0.2)  # the poller is polling
        t0 = time.time()
        api(tmp, "drain")
        drain = seen_at(watcher) - t0
        # the pass's log line is written after the kernel has it: wait for it
        drain_passes = wait(lambda: applied(log, n_applies), "the drain's pass", 10)
        drain_ack = acked_at(log, n_applies) - t0
        api(tmp, "clear")
        seen_at(poll(ns, "absent", poller=poller))
        time.sleep(0.5)
        # the health change: from the daemon's health.change line to the kernel
        n_changes = len(events(log, "health.change"))
        n_applies = len(events(log, "dataplane.apply"))
        watcher = poll(ns, "present", poller=poller)
        time.sleep(0.2)
        t_kill = time.time()
        victim.kill()
        victim.wait(10)
        at = seen_at(watcher)
        change = wait(lambda: downs(log, n_changes), "health.change", 10)[0]
        passes = [drain_passes, wait(lambda: applied(log, n_applies), "the pass", 10)]
        changed = epoch(change["timestamp"])
        acks = (drain_ack, acked_at(log, n_applies) - changed)
        return drain, at - changed, at - t_kill, passes, acks
    finally:
        victim.kill()
        victim.wait(10)


def measure(services: int, runs: int, tmp: Path, poller: str = "lib") -> dict[str, Any]:
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
        health: list[float] = []
        drains: list[float] = []
        kills: list[float] = []
        passes: list[list[list[str]]] = []
        acks: list[tuple[float, float]] = []
        try:
            start = time.monotonic()
            wait(lambda: len(events(log, "dataplane.apply")) > 0, "the first load", 300)
            # every real server up and in the table
            wait(lambda: len(events(log, "health.change")) >= len(RS), "checks up", 120)
            load = time.monotonic() - start
            for _ in range(runs):
                drain, change, kill, run_passes, run_acks = one_run(ns, log, tmp, poller)
                acks.append(run_acks)
                drains.append(drain)
                kills.append(kill)
                health.append(change)
                passes.append(run_passes)
            rss = rss_mb(daemon.pid)
            fallbacks = len(events(log, "dataplane.nft_exec_fallback"))
            # batches the netlink writer left to nft (hacontrol.dataplane.nftnl): none expected
            nl_fallbacks = len(events(log, "dataplane.nftnl_fallback"))
        finally:
            daemon.terminate()
            daemon.wait(60)
            steady.kill()
        return {
            "services": services,
            "destinations": services * len(RS) + 1,
            "first_load_s": round(load, 2),
            "event_to_kernel_s": [round(f, 4) for f in health],
            "median_s": round(statistics.median(health), 4),
            "drain_to_kernel_s": [round(f, 4) for f in drains],
            "drain_median_s": round(statistics.median(drains), 4),
            "kill_to_kernel_s": [round(f, 4) for f in kills],  # detection (checks) included
            "kill_median_s": round(statistics.median(kills), 4),
            # the daemon's own view: to the log line of the pass, written after the kernel's ack
            "ack_s": [[round(d, 5), round(h, 5)] for d, h in acks],
            "health_ack_median_s": round(statistics.median(h for _, h in acks), 5),
            "drain_ack_median_s": round(statistics.median(d for d, _ in acks), 5),
            "rss_mb": round(rss, 1),
            "nft_exec_fallbacks": fallbacks,
            "nftnl_fallbacks": nl_fallbacks,
            "passes": passes,  # per run: [drain passes, health passes], scope:ops
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--poller", choices=sorted(POLLERS), default="lib")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, nftables)")
    results = []
    with tempfile.TemporaryDirectory(prefix="hcbench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(size, args.runs, Path(tmp), args.poller)
            results.append(r)
            print(json.dumps(r), flush=True)
    base = results[0]
    for r in results[1:]:
        for what, key in (
            ("health.change to kernel", "median_s"),
            ("API drain to kernel", "drain_median_s"),
            ("kill to kernel", "kill_median_s"),
            ("health.change to the kernel's ack", "health_ack_median_s"),
            ("API drain to the kernel's ack", "drain_ack_median_s"),
        ):
            ratio = r[key] / base[key] if base[key] else float("inf")
            print(
                f"{what}: {r['services']} services {r[key] * 1000:.1f} ms / "
                f"{base['services']} services {base[key] * 1000:.1f} ms: {ratio:.2f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
