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
import os
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from failover_bench import (  # type: ignore[import-not-found]
    BenchError,
    ensure_keepalived,
    lab_cluster,
    links_dark,
    new_session,
    power_cut,
    serving,
    status,
    wait_for,
)

from hacontrol.lab import traffic
from hacontrol.lab.mixed import Kind, MixedPair
from hacontrol.lab.topology import HB_IF, INSIDE_IF, PUBLIC_IF, VIP

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
    links_dark(pair.c, name)
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
    reqs, t_cut, _, vip_on_b = power_cut(c, lambda: power_off(pair, A), args)
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
    s = new_session("hc-vrrp-")
    s.res["outage"] = {k: [] for k in args.profiles}
    try:
        with lab_cluster(s, args.json) as c:
            c.build()
            s.say("lab built")
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
                            s.res["outage"][key].append(m)
                            s.say(f"{key}: outage {m['outage_s']}s, {m['failed']} failed")
                    done += block
            finally:
                if current:
                    current.pop().stop_all()
    except BenchError as e:
        s.say(f"bench error: {e}")
    print(report({k: v for k, v in s.res["outage"].items() if v}))
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
