"""Chaos soak: the hacontrol pair (nftables plane) under a seeded schedule of faults, with clients.

On demand, not in CI (root; network namespaces; ``--minutes``, default 10). The lab's HA cluster
(bench/chaos_lab.py: client, director-a/b, rs1..rs3, documentation addresses only) runs two real
``hacontrol run`` daemons. All the time, the client makes short HTTP requests through the VIP
(hacontrol.lab.traffic's bounded load: one new connection every ``--interval``, ``--timeout``
each) and holds ``--conns`` long-lived connections to the echo service (bench/chaos_io.py: a byte
every second, its echo expected within 2 s, reopened when broken). The faults of
bench/chaos_plan.py's seeded schedule run one at a time: drain + clear, a weight override,
reloads good and bad (refused), a planned handover (drill; the preferred node preempts back),
a daemon restart (SIGTERM + start), kill -9 + start, SIGSTOP/SIGCONT shorter and longer than the
dead interval, a heartbeat partition (an nftables table dropping the heartbeat port, then healed),
a real server killed or hung (SIGSTOP), the daemon's nftables table flushed or deleted. After each
fault the runner waits until the pair settled (director-a active and serving every real server,
director-b backup, only director-a holding the VIP; at most ``--settle`` s), then a tail (late
detection of a broken connection) and a quiet gap. Every failure is attributed to the fault whose
window holds its time (a request's end); the kernel's view of who holds the VIP (bench/chaos_lab's
VipWatch) gives the time with no and with two active directors.

    python3 bench/chaos_soak.py                       # 10 minutes, seed 1
    python3 bench/chaos_soak.py --minutes 2 --seed 7 --json /tmp/soak.json --keep

Prints a table per fault kind; everything it starts is removed on exit (also on failure, Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from chaos_lab import (  # type: ignore[import-not-found]
    PORTS,
    SERVICES,
    A,
    B,
    Hold,
    SoakCluster,
    VipWatch,
    log_events,
    partition,
)  # fmt: skip
from chaos_plan import (  # type: ignore[import-not-found]
    KINDS,
    PLANNED,
    QUIET,
    Fault,
    Row,
    Window,
    count_spans,
    role_counts,
    schedule,
    summarize,
)  # fmt: skip

from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab, cleanup_stale
from hacontrol.lab.topology import REAL_SERVERS, TARGET, Timing

TAIL = 3.5  # s after settling still counted to the fault (a broken connection shows within 3 s)


class Soak:
    """Runs the schedule's faults one at a time on the cluster and records their windows."""

    def __init__(self, c: SoakCluster, watch: VipWatch, args: argparse.Namespace) -> None:
        self.c, self.watch, self.args = c, watch, args
        self.windows: list[Window] = []
        self.notes: list[dict[str, Any]] = []
        self.deaths: list[tuple[float, str, str]] = []  # (t, node, "dead"): for the log view
        self.t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ helpers

    def active(self) -> str:
        held = self.watch.holders()
        return next(iter(held)) if len(held) == 1 else A

    def pick(self, target: str) -> str:
        act = self.active()
        return act if target == "active" else (B if act == A else A)

    def both(self, method: str, path: str, body: dict[str, Any] | None = None) -> list[int]:
        return [self.c.api(d, method, path, body)[0] for d in (A, B)]

    def overrides(self, action: str, rs: str, **extra: Any) -> list[int]:
        codes = []
        for svc in SERVICES:
            body = {"action": action, "service": svc,
                    "real_server": f"{REAL_SERVERS[rs]}:{PORTS[svc]}", **extra}  # fmt: skip
            codes += self.both("POST", "/v1/overrides", body)
        return codes

    def settled(self) -> bool:
        c = self.c
        return (c.daemon_alive(A) and c.daemon_alive(B) and self.watch.holders() == {A}
                and c.role(B) == "backup" and c.serving(A))  # fmt: skip

    def settle(self) -> float | None:
        """Wait until the pair is back in its preferred state; the seconds it took (None: not
        within --settle)."""
        t, deadline = time.monotonic(), time.monotonic() + self.args.settle
        while time.monotonic() < deadline:
            if self.settled():
                return time.monotonic() - t
            time.sleep(0.2)
        return None

    # ------------------------------------------------------------ the faults

    def run_fault(self, f: Fault) -> dict[str, Any]:
        c, p = self.c, f.params
        note: dict[str, Any] = {}
        if f.kind == "drain":
            note["set"] = self.overrides("drain", p["server"], deadline=60)
            time.sleep(p["hold"])
            note["clear"] = self.overrides("clear", p["server"])
        elif f.kind == "override":
            note["set"] = self.overrides("weight", p["server"], weight=p["weight"])
            time.sleep(p["hold"])
            note["clear"] = self.overrides("clear", p["server"])
        elif f.kind == "reload_good":
            c.weights[p["server"]] = 3 - c.weights[p["server"]]  # 1 <-> 2
            c.write_all()
            note["codes"] = self.both("POST", "/v1/reload")
        elif f.kind == "reload_bad":
            for d in (A, B):
                c.write_bad(d, p["flaw"])
            note["codes"] = self.both("POST", "/v1/reload")  # 422 expected: refused
            c.write_all()
        elif f.kind == "handover":
            frm = self.active()
            code, doc = c.api(frm, "POST", "/v1/drill/handover", {}, timeout=15)
            note.update(code=code, ok=doc.get("ok"), frm=frm)
        elif f.kind in ("restart", "kill9"):
            name = note["name"] = self.pick(p["target"])
            c.kill_daemon(name, signal.SIGTERM if f.kind == "restart" else signal.SIGKILL)
            self.deaths.append((time.monotonic(), name, "dead"))
            time.sleep(p.get("down", 0.0))
            c.start_daemon(name)
        elif f.kind in ("stop_short", "stop_long"):
            name = note["name"] = self.pick(p["target"])
            c.signal_daemon(name, signal.SIGSTOP)
            time.sleep(p["hold"])
            c.signal_daemon(name, signal.SIGCONT)
        elif f.kind == "partition":
            name = note["name"] = self.pick(p["target"])
            partition(c, name, True)
            time.sleep(p["hold"])
            partition(c, name, False)
        elif f.kind == "rs_death":
            c.kill_servers(p["server"])
            time.sleep(p["hold"])
            c.start_servers(p["server"])
        elif f.kind == "rs_hang":
            c.signal_servers(p["server"], signal.SIGSTOP)
            time.sleep(p["hold"])
            c.signal_servers(p["server"], signal.SIGCONT)
        elif f.kind == "table_flush":
            name = note["name"] = self.pick(p["target"])
            fam, rules = c.nft_table_family(name) or "ip", c.table_rules(name)
            verb = "flush" if p["how"] == "flush" else "delete"
            r = c.ns(name).run("nft", verb, "table", fam, "hacontrol", check=False)
            t, deadline = time.monotonic(), time.monotonic() + self.args.settle
            while c.table_rules(name) < rules and time.monotonic() < deadline:
                time.sleep(0.2)
            note.update(rc=r.returncode, repaired_s=round(time.monotonic() - t, 2))
        return note

    def run(self, faults: list[Fault], deadline: float) -> None:
        for f in faults:
            if time.monotonic() >= deadline:
                break
            start = time.monotonic()
            note = self.run_fault(f)
            healed = time.monotonic()
            took = self.settle()
            time.sleep(TAIL)
            end = time.monotonic()
            self.windows.append(Window(start, end, f.kind, f.index, healed))
            shown = dict(note, acted_s=round(healed - start, 2),
                         settle_s=None if took is None else round(took, 2))
            self.notes.append(dict(shown, index=f.index, kind=f.kind, params=f.params,
                                   start=round(start - self.t0, 2)))
            self.say(f"{f.label()}: {json.dumps(shown)}")
            if took is None:
                self.say(f"not settled within {self.args.settle}s: {self.explain()}")
            time.sleep(f.gap)

    def explain(self) -> str:
        c = self.c
        return (f"alive {[d for d in (A, B) if c.daemon_alive(d)]}, roles "
                f"{[c.role(d) for d in (A, B)]}, VIP on {sorted(self.watch.holders())}, "
                f"a serving {c.serving(A)}")  # fmt: skip


def report(rows: dict[str, Row], res: dict[str, Any]) -> str:
    head = (f"{'fault kind':<13} {'n':>3} {'secs':>5} {'sent':>6} {'failed':>6}"
            f" {'long broken':>11} {'long open fail':>14} {'0 active s':>10} {'2 active s':>10}"
            f" {'max 2 s':>7}"
            f" {'2 after heal':>12} | {'log 0 s':>7} {'log 2 s':>7} {'trans':>5}"
            f" {'stalls':>6}")  # fmt: skip
    lines = [head, "-" * len(head)]
    order = [k for k in rows if k not in (QUIET, "total")]
    order = [*sorted(order, key=lambda k: (k not in PLANNED, k)), QUIET, "total"]
    for k in order:
        r = rows[k]
        mark = "*" if r.planned else " "
        lines.append(f"{k + mark:<13} {r.count:>3} {r.seconds:>5.0f} {r.sent:>6} {r.failed:>6} "
                     f"{r.long_broken:>11} {r.long_open_failed:>14} {r.no_active:>10.2f} "
                     f"{r.two_active:>10.2f} {r.two_active_max:>7.2f} "
                     f"{r.two_after_heal:>12.2f} | "
                     f"{r.log_no_active:>7.2f} {r.log_two_active:>7.2f} {r.transitions:>5}"
                     f" {r.stalls:>6}")  # fmt: skip
    lines.append("* planned operation (target: 0 failed). 0/2 active: seconds the kernel "
                 "showed the VIP on no / both directors;")  # fmt: skip
    lines.append("'2 after heal': longest both-hold stretch after the fault's action ended "
                 "(target: <= one interval); log: the daemons' own ha.transition view;")
    lines.append("trans: role changes logged; stalls: ha.stall lines (a daemon's event loop held "
                 "past the dead interval: the host did not run it).")  # fmt: skip
    lines.append(f"seed {res['seed']}, {res['faults_run']} faults in {res['seconds']:.0f} s; "
                 f"heartbeat interval {res['interval']} s, dead after "
                 f"{res['dead_after']}")  # fmt: skip
    return "\n".join(lines)


def soak(args: argparse.Namespace, res: dict[str, Any], workdir: Path) -> dict[str, Row]:
    timing = Timing(hb_interval=args.hb_interval, dead_after=3, preempt_delay=2.0)
    res.update(interval=timing.hb_interval, dead_after=timing.dead_after)
    # more than fits: the nominal lengths are rough, the runner stops at the deadline
    faults = schedule(args.seed, args.minutes * 2, kinds=args.kinds)
    res["schedule"] = [f.label() for f in faults]
    with NetnsLab() as lab:
        c = SoakCluster(lab, workdir, timing)
        watch = VipWatch(c)
        load: traffic.Load | None = None
        hold: Hold | None = None
        try:
            c.build()
            for rs in REAL_SERVERS:
                c.start_echo(rs)
                c.wait_echo(rs)
            c.write_all()
            s = Soak(c, watch, args)
            c.start_daemon(A)
            c.start_daemon(B)
            watch.start()
            if s.settle() is None:
                raise RuntimeError(f"the pair did not come up: {s.explain()}")
            budget = args.minutes * 60 + 3 * args.settle
            count = int(budget / args.interval) + 10
            load = traffic.Load(c.runs, c.client, TARGET, count, interval=args.interval,
                                timeout=args.timeout, duration=budget)  # fmt: skip
            hold = Hold(c, args.conns, budget)
            time.sleep(3.0)
            t_start = time.monotonic()
            s.run(faults, t_start + args.minutes * 60)
            t_end = time.monotonic()
            time.sleep(args.timeout + 0.5)
            mono_of_wall = time.time() - time.monotonic()
        finally:
            for r in (load, hold):
                if r is not None:
                    r.stop()
            watch.stop()
            for d in list(c.daemons):
                c.signal_daemon(d, signal.SIGCONT)
            for rs in REAL_SERVERS:
                c.signal_servers(rs, signal.SIGCONT)
        assert load is not None and hold is not None
        reqs = [(r.end, r.ok) for r in load.requests()]
        longs = [(float(e["t"]), str(e["ev"])) for e in hold.lines if "t" in e]
        spans = count_spans(watch.counts(), t_end)
        logged = log_events(c, mono_of_wall)
        roles = [(t, d, role) for t, d, what, role in logged if what == "transition"]
        role_spans = count_spans(role_counts([*roles, *s.deaths], (A, B)), t_end)
        rows = summarize(s.windows, reqs, longs, spans, (t_start, t_end), role_spans,
                         [(t, what) for t, _, what, _ in logged])  # fmt: skip
    res.update(seconds=t_end - t_start, faults_run=len(s.windows), faults=s.notes,
               vip_watch_errors=watch.errors,
               rows={k: {**r.__dict__, "planned": r.planned} for k, r in rows.items()},
               failed_requests=[{"t": round(r.t - t_start, 3), "dt": round(r.dt, 3),
                                 "error": r.error} for r in load.requests() if not r.ok],
               long_events=[{**e, "t": round(e["t"] - t_start, 3)} for e in hold.lines
                            if e.get("ev") != "open"],
               log_events=[(round(t - t_start, 3), *x) for t, *x in logged],
               windows=[(w.index, w.kind, round(w.start - t_start, 2), round(w.end - t_start, 2))
                        for w in s.windows])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS),
                   help=f"comma-separated fault kinds (default all: {','.join(KINDS)})")
    p.add_argument("--interval", type=float, default=0.05, help="s between short requests")
    p.add_argument("--timeout", type=float, default=1.0, help="short request timeout (s)")
    p.add_argument("--conns", type=int, default=6, help="long-lived connections")
    p.add_argument("--settle", type=float, default=45.0, help="max s to wait after a fault")
    p.add_argument("--hb-interval", type=float, default=0.2, help="heartbeat interval (s)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not (0.2 <= args.minutes <= 60 and 0.01 <= args.interval <= 1 and 1 <= args.conns <= 50):
        p.error("--minutes 0.2..60, --interval 0.01..1, --conns 1..50")
    try:
        schedule(args.seed, 0, kinds=args.kinds)
    except ValueError as e:
        p.error(str(e))
    cleanup_stale()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="hc-chaos-"))
    res: dict[str, Any] = {"command": " ".join(sys.argv), "seed": args.seed,
                           "date": datetime.now().isoformat(timespec="seconds"),
                           "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                       "loadavg_start": os.getloadavg()}}  # fmt: skip
    ok = False
    try:
        rows = soak(args, res, workdir)
        ok = True
    finally:
        res["machine"]["loadavg_end"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}", file=sys.stderr)
    print(report(rows, res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
