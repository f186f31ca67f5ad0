"""Mixed-pair failover benchmark: hacontrol (``ha.protocol: vrrp3``) paired with keepalived,
beside a keepalived + keepalived pair, in the same lab and run.

On demand, not in CI (root; network namespaces; minutes). The lab is bench/failover_bench.py's
(hacontrol.lab.topology's two-director cluster, documentation addresses only) and so are its
measuring pieces: the client's bounded load (one new HTTP connection every 10 ms, short
timeout), the power loss of the active director (every process SIGKILLed, its links dark), the
outage = the longest gap between answers around it. The pairs (hacontrol.lab.mixed; unicast
VRRPv3, priorities 150 (director-a, the active) / 100, preempt, keepalived's defaults else):

- ``kk``: keepalived + keepalived (the reference);
- ``hk``: hacontrol active, keepalived backup (hacontrol dies, keepalived takes over);
- ``kh``: keepalived active, hacontrol backup (keepalived dies, hacontrol takes over);

each at 100 ms and at 1 s advertisements. A director running keepalived also runs a standalone
hacontrol daemon for the data plane, so only the VIP mover differs. Runs are interleaved in
blocks, so a slow phase of this shared machine hits every pair alike.

    python3 bench/vrrp_bench.py --runs 3
    python3 bench/vrrp_bench.py --runs 5 --profiles kk-fast,hk-fast,kh-fast --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failover_bench import (  # type: ignore[import-not-found]
    PHASE,
    AddrMonitor,
    BenchError,
    ensure_keepalived,
    machine,
    new_load,
    serving,
    status,
    wait_answers,
    wait_for,
)

from hacontrol.lab import traffic
from hacontrol.lab.mixed import Kind, MixedPair
from hacontrol.lab.netns import NetnsLab, cleanup_stale
from hacontrol.lab.topology import HB_IF, INSIDE_IF, PUBLIC_IF, VIP, Cluster, Timing

A, B = "director-a", "director-b"
KINDS: dict[str, tuple[Kind, Kind]] = {
    "kk": ("keepalived", "keepalived"),
    "hk": ("hacontrol", "keepalived"),
    "kh": ("keepalived", "hacontrol"),
}
LABEL = {"kk": "keepalived + keepalived", "hk": "hacontrol dies -> keepalived takes over",
         "kh": "keepalived dies -> hacontrol takes over"}  # fmt: skip


@dataclass(frozen=True)
class Profile:
    key: str
    pair: str  # kk | hk | kh
    advert: float  # s

    @property
    def label(self) -> str:
        return f"{LABEL[self.pair]}, advert {self.advert * 1000:g} ms"


PROFILES = {
    f"{p}-{speed}": Profile(f"{p}-{speed}", p, adv)
    for speed, adv in (("fast", 0.1), ("default", 1.0))
    for p in KINDS
}


def ready(pair: MixedPair) -> bool:
    return (pair.role(A) == "active" and pair.role(B) == "backup" and pair.holders() == [A]
            and serving(status(pair.c, A)))  # fmt: skip


def power_off(pair: MixedPair, name: str) -> None:
    """Every process of ``name`` SIGKILLed at once, then its switch ports dark in one batch."""
    pids = [p.pid for p in (pair.procs.get(name), pair.c.daemons.get(name)) if p is not None]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for x in ("pid", "vrrp.pid"):  # keepalived's children (its VRRP process)
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            os.kill(int(pair.path(name, x).read_text().strip()), signal.SIGKILL)
    tag = name.removeprefix("director-")
    batch = "".join(f"link set {p}-{tag} down\n" for p in ("pub", "in", "hb"))
    subprocess.run(["ip", "-n", pair.c.ns("switch").name, "-batch", "-"], input=batch,
                   text=True, check=True, capture_output=True)  # fmt: skip
    pair.stop(name, signal.SIGKILL)  # reaps


def power_on(pair: MixedPair, name: str) -> None:
    """A reboot: the addresses gone, links up, the processes started again."""
    ns = pair.c.ns(name)
    for cidr, ifname in ((f"{VIP}/24", PUBLIC_IF), ("192.0.2.1/24", INSIDE_IF)):
        ns.ip("addr", "del", cidr, "dev", ifname, check=False)
    tag = name.removeprefix("director-")
    for ifname in (PUBLIC_IF, INSIDE_IF, HB_IF):
        ns.up(ifname)
    for p in ("pub", "in", "hb"):
        pair.c.ns("switch").up(f"{p}-{tag}")
    pair.start(name)


def failover_run(pair: MixedPair, args: argparse.Namespace) -> dict[str, Any]:
    c = pair.c
    wait_for(lambda: ready(pair), 180, "a active, b backup")
    mon = AddrMonitor(c, B)
    load = new_load(c, args)
    try:
        time.sleep(random.uniform(0.0, PHASE))  # a random instant in the advertisement cycle
        t_cut = time.monotonic()
        power_off(pair, A)
        wait_answers(load, 30, time.monotonic(), 60)
    finally:
        load.stop()
        vip_on_b = mon.added(VIP)
    reqs = load.requests()
    m = {
        "outage_s": round(traffic.outage(reqs, t_cut), 3),
        "failed": traffic.failures(reqs, t_cut),
        "vip_on_b_s": None if vip_on_b is None else round(vip_on_b - t_cut, 3),
        "loadavg": os.getloadavg()[0],
    }
    power_on(pair, A)
    return m


def report(out: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| pair | runs | outage median s | min s | max s | VIP on b median s |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    med: dict[str, float] = {}
    for key, runs in out.items():
        xs = [r["outage_s"] for r in runs]
        vb = [r["vip_on_b_s"] for r in runs if r["vip_on_b_s"] is not None]
        med[key] = statistics.median(xs)
        lines.append(f"| {PROFILES[key].label} | {len(xs)} | {med[key]:.3f} | {min(xs):.3f} | "
                     f"{max(xs):.3f} | {statistics.median(vb) if vb else float('nan'):.3f} |")
    for speed in ("fast", "default"):
        ref = med.get(f"kk-{speed}")
        for p in ("hk", "kh"):
            got = med.get(f"{p}-{speed}")
            if ref and got is not None:
                lines.append(f"\nratio {PROFILES[f'{p}-{speed}'].label} / keepalived pair: "
                             f"median {got / ref:.2f}x")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="failovers per profile")
    p.add_argument("--profiles", default=",".join(PROFILES), type=lambda s: s.split(","))
    p.add_argument("--block", type=int, default=1, help="runs of one profile in a row")
    p.add_argument("--load-interval", type=float, default=0.01, help="s between client requests")
    p.add_argument("--load-timeout", type=float, default=0.3, help="client request timeout (s)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not 1 <= args.runs <= 100 or any(k not in PROFILES for k in args.profiles):
        p.error(f"--runs 1..100, --profiles of {', '.join(PROFILES)}")
    ensure_keepalived()
    cleanup_stale()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="hc-vrrp-"))
    res: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv),
                           "outage": {k: [] for k in args.profiles}}  # fmt: skip
    ok = False
    try:
        with NetnsLab() as lab:
            c = Cluster(lab, workdir, ha=True, timing=Timing())
            c.build()
            say("lab built")
            current: list[MixedPair] = []
            try:
                done = 0
                while done < args.runs:
                    block = min(args.block, args.runs - done)
                    for key in args.profiles:
                        prof = PROFILES[key]
                        if current:
                            current.pop().stop_all()
                        a, b = KINDS[prof.pair]
                        pair = MixedPair(c, {A: a, B: b}, advert=prof.advert, unicast=True)
                        current.append(pair)
                        for name in (A, B):
                            pair.start(name)
                        for _ in range(block):
                            m = failover_run(pair, args)
                            res["outage"][key].append(m)
                            say(f"{key}: outage {m['outage_s']}s, {m['failed']} failed")
                    done += block
                ok = True
            finally:
                if current:
                    current.pop().stop_all()
                for r in c.runs:
                    r.stop()
    except BenchError as e:
        say(f"bench error: {e}")
    finally:
        res["machine"]["loadavg_end"] = os.getloadavg()
        res["seconds"] = round(time.monotonic() - t0, 1)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"work directory kept: {workdir}")
    print(report({k: v for k, v in res["outage"].items() if v}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
