"""Event to kernel on IPVS: from a ``health.change`` and from an API drain to the kernel table.

The IPVS counterpart of bench/event_to_kernel.py (whose listener, log reader and timing helpers
it imports). A real ``hacontrol run`` daemon (IPVS plane) in a network namespace of a kernel with
IPVS serves S services x 10 real servers (192.0.2.1-10:8080, TCP listeners on the namespace's
loopback, TCP checks; the checks are shared, so 10 serve all) plus one service whose only real
server (192.0.2.99:8080) is killed. Two figures, each the median of ``--runs``:

* health: from the timestamp of the daemon's ``health.change`` log line (down) for the killed
  server to the moment a poller process sees its destination gone from the kernel;
* drain: from just before ``POST /v1/overrides`` (drain 192.0.2.1:8080 of service s0, no
  connections) to the poller seeing that destination at weight 0 or gone; ``clear`` puts it back
  before the next run.

The poller is a separate process in the namespace that dumps the one service's destinations over
netlink (``IpvsDataplane.dump_nested``: no process start per poll) every ~2 ms, bounded in count
and time; both ends read the same wall clock. Runs S = 10 and S = 1,000 in one invocation, prints
the 1,000 / 10 ratio and the daemon's RSS (VmRSS) with the table loaded (10,001 destinations).

    python3 bench/ipvs_event_bench.py [--sizes 10,1000] [--runs 5] [--json out.json]

As root. On a host without IPVS the script re-runs itself inside the qemu guest of tests/vm (one
boot, the tree snapshotted first; docs/testing.md), where it runs under TCG emulation unless KVM
is available. Every namespace and process is removed at the end, also after a failure.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import guest
from event_to_kernel import LISTEN, PORT, RS, VICTIM, epoch, events, rss_mb, wait

from hacontrol.cli_api import api_call
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

REPO = Path(__file__).resolve().parents[1]
VICTIM_SVC = ("198.51.100.250", 9999)
DRAINED = "192.0.2.1"  # the real server drained in service s0
S0 = ("198.51.100.1", 1000)

POLL = r"""
import asyncio, json, sys, time
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.ipvs_codec import CMD, CMD_ATTR_DEST, decode_dest, service_attrs
from hacontrol.dataplane.table import ServiceKey
def done(got, dest, want):
    if want == "absent":
        return dest not in got
    if want == "out":  # not scheduled: weight 0 or gone
        return got.get(dest, 0) == 0
    return got.get(dest) == int(want)  # a weight
async def watch(plane, addr, port, dest, want, limit):
    body = service_attrs(ServiceKey("tcp", addr, int(port)), None)
    deadline, polls = time.monotonic() + float(limit), 0
    while time.monotonic() < deadline and polls < 500000:
        polls += 1
        try:
            dests = await plane.dump_nested(CMD["get_dest"], body, CMD_ATTR_DEST)
        except Exception:
            dests = []  # the service itself is gone
        got = {str(k): w for k, _f, w in (decode_dest(a, 2) for a in dests)}
        if done(got, dest, want):
            return {"at": time.time(), "polls": polls}
        if polls == 1:
            print("@armed", flush=True)  # polling: the caller may act now
        await asyncio.sleep(0.002)
    return {"at": None, "polls": polls}
async def main():
    plane = IpvsDataplane()
    await plane.open()
    loop = asyncio.get_running_loop()
    print("@ready", flush=True)
    try:
        for _ in range(10000):
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            print("@" + json.dumps(await watch(plane, *line.split())), flush=True)
    finally:
        await plane.close()
asyncio.run(main())
"""


class Poller:
    """One poller process in the namespace; ``arm`` starts a watch and returns once it polls
    (a watch already satisfied returns at once), ``seen`` is when the kernel showed it."""

    def __init__(self, ns: Ns, errlog: Path) -> None:
        self.errlog = errlog
        with open(errlog, "ab") as err:
            self.p = ns.popen(sys.executable, "-c", POLL, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        self.expect("ready")
        self.result: str | None = None

    def line(self) -> str:
        """The next line marked ``@`` (anything else the plane may print is passed on)."""
        assert self.p.stdout is not None
        for _ in range(1000):
            line: str = self.p.stdout.readline()
            if not line or line.startswith("@"):
                return line[1:].strip()
            print(f"[poller] {line.rstrip()}", file=sys.stderr)
        return ""

    def expect(self, what: str) -> None:
        got = self.line()
        if got != what:
            raise SystemExit(f"poller: wanted {what!r}, got {got!r} (exit {self.p.poll()}): "
                             f"{self.errlog.read_text()[-2000:]}")  # fmt: skip

    def arm(self, svc: tuple[str, int], dest: str, want: str, limit: float = 60) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(f"{svc[0]} {svc[1]} {dest}:{PORT} {want} {limit}\n")
        self.p.stdin.flush()
        got = self.line()
        self.result = None if got == "armed" else got

    def seen(self) -> float:
        got = json.loads(self.result or self.line() or '{"at": null}')
        if got["at"] is None:
            raise SystemExit("the kernel never showed the change")
        return float(got["at"])

    def close(self) -> None:
        if self.p.stdin is not None:
            self.p.stdin.close()
        self.p.wait(30)


def config(tmp: Path, services: int) -> str:
    lines = [
        "node: {name: bench}",
        f'api: {{listen: "unix:{tmp}/api.sock"}}',
        f"dataplane: {{kind: ipvs, state_dir: {tmp}/state{services}, resync_interval: 60s, "
        "keep_on_stop: false}",
        "logging: {level: info, format: json}",
        "services:",
    ]
    # timeout generous for emulation: a slow check must not flap a steady server mid-run
    check = "check: {type: tcp, interval: 1s, timeout: 900ms, rise: 1, fall: 1}"
    for i in range(services):
        lines.append(
            f"  - {{name: s{i}, vip: 198.51.100.{1 + i // 250}, port: {1000 + i % 250}, "
            f"scheduler: wrr, forwarding: nat, {check}, real_servers: ["
            + ", ".join(f"{{address: {a}, port: {PORT}}}" for a in RS)
            + "]}"
        )
    lines.append(
        f"  - {{name: victim, vip: {VICTIM_SVC[0]}, port: {VICTIM_SVC[1]}, forwarding: nat, "
        f"{check}, real_servers: [{{address: {VICTIM}, port: {PORT}}}]}}"
    )
    return "\n".join(lines) + "\n"


def override(api: str, action: str) -> None:
    body = {"action": action, "service": "s0", "real_server": f"{DRAINED}:{PORT}"}
    code, doc = api_call(api, "POST", "/v1/overrides", body, timeout=30)
    if code != 200:
        raise SystemExit(f"POST /v1/overrides {action}: {code} {doc}")


def measure(services: int, runs: int, tmp: Path) -> dict[str, Any]:
    with NetnsLab() as lab:
        ns = lab.add("dir", forward=True)
        for a in [*RS, VICTIM, *{f"198.51.100.{1 + i // 250}" for i in range(services)},
                  VICTIM_SVC[0]]:  # fmt: skip
            ns.addr("lo", f"{a}/32")
        steady = ns.popen(sys.executable, "-c", LISTEN, *RS, stdout=subprocess.PIPE, text=True)
        for a in RS:
            wait_tcp(ns, a, PORT)
        cfg, log = tmp / f"hc{services}.yaml", tmp / f"hc{services}.log"
        cfg.write_text(config(tmp, services))
        api = f"unix:{tmp}/api.sock"
        with open(log, "wb") as out:
            daemon = ns.popen(sys.executable, "-m", "hacontrol", "run", "-c", str(cfg),
                              stdout=out, stderr=out)  # fmt: skip
        health: list[float] = []
        drain: list[float] = []
        passes: list[list[str]] = []
        try:
            start = time.monotonic()
            wait(lambda: len(events(log, "dataplane.apply")) > 0, "the first load", 900)
            wait(lambda: len(events(log, "health.change")) >= len(RS), "checks up", 300)
            watch = Poller(ns, tmp / f"poller{services}.err")
            watch.arm(S0, DRAINED, "1", 300)
            watch.seen()
            load = time.monotonic() - start
            for _ in range(runs):
                victim = ns.popen(sys.executable, "-c", LISTEN, VICTIM, stdout=subprocess.PIPE,
                                  text=True)  # fmt: skip
                assert victim.stdout is not None
                victim.stdout.readline()
                watch.arm(VICTIM_SVC, VICTIM, "1")
                watch.seen()  # it is back in the kernel
                time.sleep(0.5)
                n_changes = len(events(log, "health.change"))
                n_applies = len(events(log, "dataplane.apply"))
                watch.arm(VICTIM_SVC, VICTIM, "absent")
                victim.kill()
                victim.wait(10)
                at = watch.seen()
                change = wait(
                    lambda n=n_changes: [
                        e for e in events(log, "health.change")[n:] if e.get("to") == "down"
                    ],
                    "health.change", 30,
                )[0]  # fmt: skip
                health.append(at - epoch(change["timestamp"]))
                # the pass logs once its acks are in: the kernel may show it before the line
                applied = wait(lambda n=n_applies: events(log, "dataplane.apply")[n:],
                               "the pass's log line", 30)  # fmt: skip
                passes.append([f"{e.get('scope')}:{e.get('actions')}" for e in applied])
            for _ in range(runs):
                watch.arm(S0, DRAINED, "out")
                t0 = time.time()
                override(api, "drain")
                drain.append(watch.seen() - t0)
                override(api, "clear")
                watch.arm(S0, DRAINED, "1")
                watch.seen()
            rss = rss_mb(daemon.pid)
            watch.close()
        except BaseException:  # say why: the daemon's last lines
            print(f"[bench] {services} services failed; the daemon's log ends:", flush=True)
            print("\n".join(log.read_text(errors="replace").splitlines()[-15:]), flush=True)
            raise
        finally:
            daemon.terminate()
            daemon.wait(120)
            steady.kill()
        return {
            "services": services,
            "destinations": services * len(RS) + 1,
            "first_load_s": round(load, 2),
            "health_to_kernel_s": [round(f, 4) for f in health],
            "health_median_s": round(statistics.median(health), 4),
            "drain_to_kernel_s": [round(f, 4) for f in drain],
            "drain_median_s": round(statistics.median(drain), 4),
            "rss_mb": round(rss, 1),
            "passes": passes,
        }


def main() -> int:
    argv = sys.argv[1:]
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sizes", default="10,1000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, IPVS)")
    if (
        not os.path.exists("/proc/net/ip_vs")
        and subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_wrr"], capture_output=True).returncode
    ):
        return guest.in_vm("ipvs_event_bench.py", list(argv), timeout=3000)
    started = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="hcbench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(size, args.runs, Path(tmp))
            results.append(r)
            print(json.dumps(r), flush=True)
    for key in ("health_median_s", "drain_median_s"):
        base = results[0][key]
        for r in results[1:]:
            ratio = r[key] / base if base else float("inf")
            print(f"{key}: {r['services']} services / {results[0]['services']}: {ratio:.2f}x")
    doc = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "kernel": os.uname().release,
        "command": "python3 bench/ipvs_event_bench.py " + " ".join(argv),
        "results": results,
    }
    print(json.dumps({k: doc[k] for k in ("date", "kernel", "command")}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
