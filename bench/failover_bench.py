"""HA failover benchmark: the hacontrol pair against keepalived (VRRPv3) in the same lab and run.

On demand, not in CI (root; network namespaces; minutes). It builds the lab's two-director
cluster once (hacontrol.lab.topology: client, director-a/b, rs1..rs3, documentation addresses
only) and measures, with the lab's own bounded client load (hacontrol.lab.traffic: one new HTTP
connection every 10 ms, short timeout):

1. ``outage``: the client-observed outage (longest gap between successful answers around the
   failure) when the active director loses power: its links go down, then its daemons are
   SIGKILLed. Profiles: hacontrol at interval 100 ms x 3 and at its defaults; keepalived (Debian's
   package, VRRPv3, unicast, priorities 150/100, preempt) at advert_int 0.1 and at its default
   (1 s). keepalived runs beside a standalone hacontrol daemon in each director that only keeps
   the nftables table (the same data plane for both), so only the VIP mover differs. Runs are
   interleaved in blocks so slow phases of this shared machine hit every profile alike.
2. ``starve``: both cores busy (stress-ng, else a Python burner; 60 s) with each pair at 100 ms x 3,
   one pair after the other: role changes counted from the logs.
3. ``handover``: ``hacontrol drill handover`` under continuous client requests: failed requests and
   the longest gap (then the preemption back, measured the same way).

    python3 bench/failover_bench.py --runs 10
    python3 bench/failover_bench.py --runs 3 --parts outage --profiles hc-fast,ka-fast

Everything it starts lives in its namespaces and is removed on exit (also on failure or Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab, cleanup_stale
from hacontrol.lab.topology import (
    API,
    GATEWAY,
    INSIDE_IF,
    PAIR,
    PUBLIC_IF,
    REAL_SERVERS,
    TARGET,
    VIP,
    Cluster,
    Timing,
)  # fmt: skip

HERE = Path(__file__).resolve().parent
A, B = "director-a", "director-b"
PEER_OF = {A: B, B: A}
KA_TEMPLATE = HERE / "keepalived" / "keepalived.conf.in"
PHASE = 1.0  # s; >= every profile's heartbeat interval: the failure falls anywhere in a cycle


class BenchError(Exception):
    """A phase did not reach the state it waits for (the message says which)."""


@dataclass(frozen=True)
class Profile:
    key: str
    kind: str  # "hacontrol" | "keepalived"
    interval: float | None  # None: the implementation's default
    label: str


PROFILES = {
    "hc-fast": Profile("hc-fast", "hacontrol", 0.1, "hacontrol 100 ms x 3"),
    "hc-default": Profile("hc-default", "hacontrol", None, "hacontrol defaults"),
    "ka-fast": Profile("ka-fast", "keepalived", 0.1, "keepalived advert_int 0.1"),
    "ka-default": Profile("ka-default", "keepalived", None, "keepalived defaults (1 s)"),
}


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} within {timeout:.0f}s")
        time.sleep(step)
    return time.monotonic()


def status(c: Cluster, name: str) -> dict[str, Any]:
    url = f"http://{API}/v1/status"
    r = c.ns(name).run("curl", "-s", "-m", "2", url, check=False)
    with contextlib.suppress(ValueError):
        doc = json.loads(r.stdout)
        if isinstance(doc, dict):
            return doc
    return {}


def serving(doc: dict[str, Any]) -> bool:
    rss = [rs for s in doc.get("services", []) for rs in s.get("real_servers", [])]
    return len(rss) == len(REAL_SERVERS) and all(
        rs.get("health") == "up" and rs.get("kernel_weight") for rs in rss
    )


def holds_vips(c: Cluster, name: str) -> bool:
    r = c.ns(name).ip("-j", "addr", "show", check=False)
    with contextlib.suppress(ValueError):
        addrs = {a.get("local") for i in json.loads(r.stdout) for a in i.get("addr_info", [])}
        return VIP in addrs and GATEWAY in addrs
    return False


def drop_vips(c: Cluster, name: str) -> None:
    """What a reboot does to a powered-off director's addresses."""
    for cidr, ifname in ((f"{VIP}/24", PUBLIC_IF), (f"{GATEWAY}/24", INSIDE_IF)):
        c.ns(name).ip("addr", "del", cidr, "dev", ifname, check=False)


def log_from(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()
    return ""


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def links_dark(c: Cluster, name: str) -> None:
    """The switch ports of ``name`` (public, inside, heartbeat) down in one batch."""
    tag = name.removeprefix("director-")
    batch = "".join(f"link set {p}-{tag} down\n" for p in ("pub", "in", "hb"))
    subprocess.run(["ip", "-n", c.ns("switch").name, "-batch", "-"], input=batch, text=True,
                   check=True, capture_output=True)  # fmt: skip


class Stack:
    """The VIP mover of one profile (plus the data plane) on both directors."""

    def __init__(self, c: Cluster, prof: Profile) -> None:
        self.c, self.prof = c, prof
        self.dir = c.workdir / prof.key
        self.dir.mkdir(exist_ok=True)
        self.started: dict[str, int] = {}  # log offset at each director's last start

    def log(self, name: str) -> Path:
        return self.c.log_path(name)

    def daemon_config(self, name: str) -> dict[str, Any]:
        cfg = self.c.config(self.c.directors[name])
        cfg["logging"]["level"] = "info"
        return cfg

    def write(self) -> None:
        for name in (A, B):
            cfg = self.daemon_config(name)
            self.c.config_path(name).write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, name: str) -> None:
        self.started[name] = size(self.log(name))
        self.c.start_daemon(name)

    def power_off(self, name: str) -> None:
        """Like a power loss: every daemon of ``name`` SIGKILLed at once (none can react), then
        its links dark in one batch; then the cluster's own power_off (reaps, idempotent)."""
        self.kill_extra(name)
        p = self.c.daemons.get(name)
        if p is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        links_dark(self.c, name)
        self.c.power_off(name)

    def kill_extra(self, name: str) -> None:
        """SIGKILL the profile's own processes in ``name`` (keepalived), without waiting."""

    def power_on(self, name: str) -> None:
        drop_vips(self.c, name)
        self.started[name] = size(self.log(name))
        self.c.power_on(name)

    def stop_all(self) -> None:
        for name in (B, A):
            self.c.kill_daemon(name, signal.SIGTERM)
        for name in (A, B):
            drop_vips(self.c, name)

    def ready(self) -> bool:
        """director-a active and serving, director-b backup, only a holding the VIPs."""
        raise NotImplementedError

    def transitions(self, name: str, offset: int) -> list[str]:
        raise NotImplementedError

    def timeline(self, t_cut: float) -> dict[str, float | None]:
        """The new active's own account of its takeover, in seconds after ``t_cut``."""
        return {}

    def stalls(self, name: str, offset: int) -> list[float]:
        return []


class HcStack(Stack):
    def daemon_config(self, name: str) -> dict[str, Any]:
        cfg = super().daemon_config(name)
        ha = cfg["ha"]
        for key in ("interval", "dead_after", "preempt_delay", "announce", "lease"):
            ha.pop(key)  # the daemon's defaults, unless the profile says otherwise
        if self.prof.interval is not None:
            ha["interval"] = f"{int(self.prof.interval * 1000)}ms"
            ha["dead_after"] = 3
            ha["preempt_delay"] = "2s"  # the return only, not the failover: a shorter bench
        return cfg

    def ready(self) -> bool:
        a, b = status(self.c, A), status(self.c, B)
        return (a.get("role") == "active" and serving(a) and b.get("role") == "backup"
                and holds_vips(self.c, A) and not holds_vips(self.c, B))  # fmt: skip

    def events(self, name: str, offset: int, event: str) -> list[dict[str, Any]]:
        """The daemon's JSON log events named ``event`` since ``offset``."""
        out = []
        for line in log_from(self.log(name), offset).splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and ev.get("event") == event:
                    out.append(ev)
        return out

    def transitions(self, name: str, offset: int) -> list[str]:
        return [f"{e.get('from_role')}->{e.get('to_role')}: {e.get('reason')}"
                for e in self.events(name, offset, "ha.transition")]  # fmt: skip

    def stalls(self, name: str, offset: int) -> list[float]:
        """The loop stalls the daemon noticed (``ha.stall`` gaps, s) since ``offset``."""
        return [float(e.get("gap") or 0) for e in self.events(name, offset, "ha.stall")]

    def timeline(self, t_cut: float) -> dict[str, float | None]:
        t0 = time.monotonic()
        doc = status(self.c, B)
        now = (t0 + time.monotonic()) / 2  # the API answered within this curl's run
        marks = (doc.get("ha") or {}).get("last_takeover") or {}
        return {f"b_{k}_s": None if marks.get(k) is None else round(now - marks[k] - t_cut, 3)
                for k in ("detected", "vip_added", "announced")}  # fmt: skip


class KaStack(Stack):
    """keepalived moves the VIPs; a standalone hacontrol daemon keeps the nftables table."""

    def __init__(self, c: Cluster, prof: Profile) -> None:
        super().__init__(c, prof)
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def log(self, name: str) -> Path:
        return self.dir / f"keepalived-{name}.log"

    def daemon_config(self, name: str) -> dict[str, Any]:
        cfg = super().daemon_config(name)
        del cfg["ha"]
        return cfg

    def write(self) -> None:
        super().write()
        for d in PAIR:
            peer = self.c.directors[PEER_OF[d.name]]
            text = KA_TEMPLATE.read_text().format(
                name=d.name, interface=INSIDE_IF, priority=d.priority, src=d.inside,
                peer=peer.inside,
                advert_int="" if self.prof.interval is None else f"advert_int {self.prof.interval}",
                vips=f"{VIP}/24 dev {PUBLIC_IF}\n        {GATEWAY}/24 dev {INSIDE_IF}",
            )  # fmt: skip
            (self.dir / f"{d.name}.conf").write_text(text)

    def start(self, name: str) -> None:
        super().start(name)  # the data plane
        self.start_keepalived(name)

    def kill(self, name: str, sig: int, wait: bool = True) -> None:
        """Signal keepalived's process group and both its pid files' processes."""
        p = self.procs.pop(name, None)
        if p is None:
            return
        pids = [-p.pid]
        for x in ("pid", "vrrp.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((self.dir / f"{name}.{x}").read_text().strip()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)

    def kill_extra(self, name: str) -> None:
        self.kill(name, signal.SIGKILL, wait=False)

    def power_on(self, name: str) -> None:
        super().power_on(name)  # links up, the data plane daemon
        self.start_keepalived(name)

    def start_keepalived(self, name: str) -> None:
        files = [str(self.dir / f"{name}.{x}") for x in ("conf", "pid", "vrrp.pid")]
        for f in files[1:]:  # a reboot clears /run: a killed keepalived's pid files go too
            Path(f).unlink(missing_ok=True)
        with open(self.log(name), "a") as log:
            self.procs[name] = self.c.ns(name).popen(
                "keepalived", "-n", "-l", "-G", "-D", "--vrrp", "-f", files[0], "-p", files[1],
                "-r", files[2], stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def stop_all(self) -> None:
        for name in (B, A):
            self.kill(name, signal.SIGTERM)
        super().stop_all()

    def state(self, name: str) -> str | None:
        """The last state keepalived logged since its last start."""
        last = None
        for line in log_from(self.log(name), self.started.get(name, 0)).splitlines():
            for st in ("MASTER", "BACKUP", "FAULT"):
                if f"Entering {st} STATE" in line:
                    last = st
        return last

    def ready(self) -> bool:
        return (self.state(A) == "MASTER" and self.state(B) == "BACKUP"
                and holds_vips(self.c, A) and not holds_vips(self.c, B)
                and serving(status(self.c, A)))  # fmt: skip

    def transitions(self, name: str, offset: int) -> list[str]:
        return [line.strip() for line in log_from(self.log(name), offset).splitlines()
                if "Entering " in line and " STATE" in line]  # fmt: skip


# ---------------------------------------------------------------- measurements


def new_load(c: Cluster, args: argparse.Namespace, timeout: float | None = None) -> traffic.Load:
    load = traffic.Load(c.runs, c.client, TARGET, traffic.MAX_COUNT, interval=args.load_interval,
                        timeout=timeout or args.load_timeout, duration=120.0)  # fmt: skip
    wait_answers(load, 20, 0.0, 30)
    return load


def wait_answers(load: traffic.Load, n: int, since: float, timeout: float) -> float:
    """Wait until ``n`` requests started at or after ``since`` were answered."""
    return wait_for(lambda: sum(r.ok for r in traffic.between(load.requests(), since)) >= n,
                    timeout, f"{n} client answers", step=0.05)  # fmt: skip


class AddrMonitor:
    """``ip -ts monitor address`` in a namespace: when an address first appeared (monotonic s)."""

    def __init__(self, c: Cluster, name: str) -> None:
        argv = ["timeout", "300", "ip", "-n", c.ns(name).name, "-ts", "monitor", "address"]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )

    def events(self, address: str) -> list[tuple[float, bool]]:
        """Stop the monitor; (monotonic time, added?) of every change of ``address``."""
        self.proc.terminate()
        text, _ = self.proc.communicate(timeout=10)
        wall_minus_mono = time.time() - time.monotonic()
        out = []
        for line in text.splitlines():
            if line.startswith("[") and f"inet {address}/" in line:
                at = datetime.fromisoformat(line[1 : line.index("]")]).timestamp()
                out.append((at - wall_minus_mono, "Deleted" not in line))
        return out

    def added(self, address: str, after_delete: bool = False) -> float | None:
        """When ``address`` was first added (after its first removal, with ``after_delete``)."""
        seen_delete = not after_delete
        for at, added in self.events(address):
            if added and seen_delete:
                return at
            seen_delete = seen_delete or not added
        return None


def power_cut(
    c: Cluster, power_off: Callable[[], None], args: argparse.Namespace
) -> tuple[list[traffic.Request], float, float, float | None]:
    """Under the client's load, ``power_off`` (director-a) at a random instant of the heartbeat
    or advertisement cycle, then 30 answers again: the requests, when the cut began and ended,
    and when the VIP appeared on director-b (None: not seen)."""
    mon = AddrMonitor(c, B)
    load = new_load(c, args)
    try:
        time.sleep(random.uniform(0.0, PHASE))
        t_cut = time.monotonic()
        power_off()
        t_off = time.monotonic()
        wait_answers(load, 30, t_off, 60)
    finally:
        load.stop()
        vip_on_b = mon.added(VIP)
    return load.requests(), t_cut, t_off, vip_on_b


def failover_run(c: Cluster, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    wait_for(stack.ready, 180, f"{stack.prof.key}: a active, b backup")
    reqs, t_cut, t_off, vip_on_b = power_cut(c, lambda: stack.power_off(A), args)
    m = {
        "outage_s": round(traffic.outage(reqs, t_cut), 3),
        "failed": traffic.failures(reqs, t_cut),
        "requests": len(traffic.between(reqs, t_cut)),
        "vip_on_b_s": None if vip_on_b is None else round(vip_on_b - t_cut, 3),
        "power_off_s": round(t_off - t_cut, 3),
        "loadavg": os.getloadavg()[0],
        "vip_at": c.holder(c.neighbour("client", VIP)),
        **stack.timeline(t_cut),
    }
    stack.power_on(A)
    return m


@contextlib.contextmanager
def burner(seconds: float, n: int) -> Iterator[str]:
    """Every core busy for ``seconds`` (stress-ng if installed, else Python loops); bounded."""
    if shutil.which("stress-ng"):
        argv = [["stress-ng", "--cpu", str(n), "--timeout", f"{int(seconds)}s", "--quiet"]]
        how = f"stress-ng --cpu {n} --timeout {int(seconds)}s"
    else:
        loop = (
            f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
        )
        argv = [[sys.executable, "-c", loop] for _ in range(n)]
        how = f"{n} Python busy loops for {seconds:g}s"
    procs = [subprocess.Popen(a, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for a in argv]  # fmt: skip
    try:
        yield how
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)


def starve_run(c: Cluster, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    wait_for(stack.ready, 180, f"{stack.prof.key}: a active, b backup")
    offsets = {n: size(stack.log(n)) for n in (A, B)}
    secs = args.starve_seconds
    load = traffic.Load(c.runs, c.client, TARGET, traffic.MAX_COUNT, interval=0.05, timeout=1.0,
                        duration=secs + 60)  # fmt: skip
    try:
        wait_answers(load, 10, 0.0, 30)
        t0 = time.monotonic()
        with burner(secs, args.burners) as how:
            time.sleep(secs)
        t1 = time.monotonic()
        time.sleep(3)  # transitions logged just after the burner ends still count
    finally:
        load.stop()
    reqs = load.requests()
    changes = {n: stack.transitions(n, offsets[n]) for n in (A, B)}
    return {
        "burner": how,
        "seconds": round(t1 - t0, 1),
        "role_changes": sum(len(v) for v in changes.values()),
        "transitions": changes,
        "stalls_noticed": {n: stack.stalls(n, offsets[n]) for n in (A, B)},
        "client_requests": len(traffic.between(reqs, t0, t1)),
        "client_failed": traffic.failures(reqs, t0, t1),
        "client_longest_gap_s": round(traffic.outage(reqs, t0, t1), 3),
        "a_holds_vips_after": holds_vips(c, A),
        "b_holds_vips_after": holds_vips(c, B),
    }


def errors(reqs: list[traffic.Request], move: float, start: float, end: float = float("inf")
           ) -> list[str]:  # fmt: skip
    """The failed requests of [start, end): error, start relative to the VIP ``move``, latency."""
    return [f"{r.error}: started {r.t - move:+.3f}s from the VIP move, gave up after {r.dt:.3f}s"
            for r in traffic.between(reqs, start, end) if not r.ok]  # fmt: skip


def handover_run(c: Cluster, stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """A planned handover a -> b under load, then a's preemption back (both measured).

    The windows are split halfway between b taking the VIPs and a taking them back (from
    ``ip monitor`` in both namespaces); failed requests are timed from b taking the VIPs."""
    wait_for(stack.ready, 180, "hc-fast: a active, b backup")
    mon_a, mon_b = AddrMonitor(c, A), AddrMonitor(c, B)
    load = new_load(c, args, timeout=args.handover_timeout)
    try:
        t_h = time.monotonic()
        r = c.hacontrol(A, "drill", "handover", "--json", "--api", API, "-c", str(c.config_path(A)))
        if r.returncode != 0:
            raise BenchError(f"hacontrol drill handover: {(r.stderr or r.stdout).strip()[:300]}")
        wait_for(lambda: status(c, B).get("role") == "active", 30, "b active")
        t_back = wait_for(stack.ready, 60, "a active again (preemption)")
        wait_answers(load, 30, t_back, 30)
    finally:
        load.stop()
        t_b, t_a = mon_b.added(VIP), mon_a.added(VIP, after_delete=True)
    if t_b is None or t_a is None:
        raise BenchError(f"no VIP move seen by ip monitor (b at {t_b}, a back at {t_a})")
    reqs, t_mid = load.requests(), (t_b + t_a) / 2
    drill: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        drill = json.loads(r.stdout)
    return {
        "failed": traffic.failures(reqs, t_h, t_mid),
        "errors": errors(reqs, t_b, t_h, t_mid),
        "longest_gap_s": round(traffic.outage(reqs, t_h, t_mid), 3),
        "requests": len(traffic.between(reqs, t_h, t_mid)),
        "vip_on_b_s": round(t_b - t_h, 3),
        "drill": {k: drill.get(k) for k in ("ok", "gap", "overlap", "vip_added", "released_here")},
        "preempt_failed": traffic.failures(reqs, t_mid),
        "preempt_errors": errors(reqs, t_a, t_mid),
        "preempt_longest_gap_s": round(traffic.outage(reqs, t_mid), 3),
        "loadavg": os.getloadavg()[0],
    }


# ---------------------------------------------------------------- the run and the report


def machine() -> dict[str, Any]:
    def out(*argv: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        return "?"

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "?")  # fmt: skip
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node(), "kernel": platform.release(), "cpu": cpu,
        "cores": os.cpu_count(), "loadavg_start": os.getloadavg(),
        "python": platform.python_version(), "keepalived": out("keepalived", "-v"),
        "stress-ng": out("stress-ng", "--version"),
        "commit": os.environ.get("BENCH_COMMIT")
        or out("git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"),
    }  # fmt: skip


@dataclass
class Session:
    """One run of a lab benchmark: its measurements (``res``), its work directory, its clock
    for the progress lines (``say``) and whether it finished (``ok``)."""

    res: dict[str, Any]
    workdir: Path
    t0: float
    ok: bool = False

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def new_session(prefix: str) -> Session:
    """Stale labs removed, SIGTERM an exit (so every cleanup runs), the machine noted."""
    cleanup_stale()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    return Session({"machine": machine(), "command": " ".join(sys.argv)}, workdir, t0)


@contextlib.contextmanager
def lab_cluster(s: Session, json_out: Path | None, keep: bool = False) -> Iterator[Cluster]:
    """The two-director cluster in a fresh lab. On leaving (also on failure): its processes
    stopped, the lab removed, ``s.res`` written to ``json_out``, the work directory removed if
    the body finished (``s.ok``) and not ``keep``, else kept and said."""
    try:
        with NetnsLab() as lab:
            c = Cluster(lab, s.workdir, ha=True, timing=Timing())
            try:
                yield c
                s.ok = True
            finally:
                for r in c.runs:
                    r.stop()
    finally:
        s.res["machine"]["loadavg_end"] = os.getloadavg()
        s.res["seconds"] = round(time.monotonic() - s.t0, 1)
        if json_out:
            json_out.write_text(json.dumps(s.res, indent=1) + "\n")
        if s.ok and not keep:
            shutil.rmtree(s.workdir, ignore_errors=True)
        else:
            s.say(f"work directory kept: {s.workdir}")


def ensure_keepalived() -> None:
    if shutil.which("keepalived"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("keepalived missing: apt-get install -y keepalived", file=sys.stderr)
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "keepalived"]):
        subprocess.run(argv, env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)


def stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": min(xs), "max": max(xs)}


def report(res: dict[str, Any]) -> str:
    lines = []
    out = res.get("outage", {})
    if out:
        lines += ["| profile | runs | outage median s | min s | max s | failed requests (median) |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for key, runs in out.items():
            s = stats([r["outage_s"] for r in runs])
            f = statistics.median(r["failed"] for r in runs)
            lines.append(f"| {PROFILES[key].label} | {len(runs)} | {s['median']:.3f} | "
                         f"{s['min']:.3f} | {s['max']:.3f} | {f:g} |")  # fmt: skip
        for hc, ka, target in (("hc-fast", "ka-fast", 0.9), ("hc-default", "ka-default", 0.35)):
            if hc in out and ka in out:
                h = stats([r["outage_s"] for r in out[hc]])
                k = stats([r["outage_s"] for r in out[ka]])
                ratio = h["median"] / k["median"]
                verdict = "met" if ratio <= target else f"MISSED by {ratio / target - 1:.0%}"
                lines.append(f"\nratio {PROFILES[hc].label} / {PROFILES[ka].label}: median "
                             f"{ratio:.2f}x (target <= {target}x: {verdict}), max "
                             f"{h['max'] / k['max']:.2f}x")  # fmt: skip
    for key, s in res.get("starve", {}).items():
        lines.append(f"\nstarvation, {PROFILES[key].label}, {s['burner']}: {s['role_changes']} "
                     f"role changes; client {s['client_failed']}/{s['client_requests']} failed, "
                     f"longest gap {s['client_longest_gap_s']}s; loop stalls noticed "
                     f"{sum(len(v) for v in s.get('stalls_noticed', {}).values())}")  # fmt: skip
    hs = res.get("handover", [])
    if hs:
        gaps = stats([h["longest_gap_s"] for h in hs])
        pre = stats([h["preempt_longest_gap_s"] for h in hs])
        failed = sum(h["failed"] for h in hs)
        lines.append(f"\nplanned handover x{len(hs)}: failed requests {failed} in total;"
                     f" longest gap median {gaps['median']}s max {gaps['max']}s; "
                     f"preemption back: failed {sum(h['preempt_failed'] for h in hs)}, longest "
                     f"gap median {pre['median']}s max {pre['max']}s")  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace, c: Cluster, res: dict[str, Any], say: Callable[[str], None]
        ) -> None:  # fmt: skip
    c.build()
    say("lab built")
    keys = [k for k in args.profiles if k in PROFILES]
    stacks: dict[str, Stack] = {
        k: (HcStack if PROFILES[k].kind == "hacontrol" else KaStack)(c, PROFILES[k]) for k in keys
    }
    current: list[Stack] = []

    def use(key: str) -> Stack:
        st = stacks[key]
        if current and current[0] is st:
            return st
        if current:
            current.pop().stop_all()
        st.write()
        for name in (A, B):
            st.start(name)
        current.append(st)
        wait_for(st.ready, 180, f"{key}: a active, b backup")
        say(f"{key}: pair ready")
        return st

    if "outage" in args.parts:
        res["outage"] = {k: [] for k in keys}
        done = 0
        while done < args.runs:
            block = min(args.block, args.runs - done)
            for k in keys:
                st = use(k)
                for _ in range(block):
                    m = failover_run(c, st, args)
                    res["outage"][k].append(m)
                    say(f"{k}: outage {m['outage_s']}s, {m['failed']} failed, VIP at {m['vip_at']}")
            done += block
    if "starve" in args.parts:
        res["starve"] = {}
        for k in ("hc-fast", "ka-fast"):
            if k in stacks:
                res["starve"][k] = s = starve_run(c, use(k), args)
                say(f"{k}: starvation: {s['role_changes']} role changes {s['transitions']}")
    if "handover" in args.parts and "hc-fast" in stacks:
        st = use("hc-fast")
        res["handover"] = []
        for _ in range(args.runs):
            h = handover_run(c, st, args)
            res["handover"].append(h)
            say(f"handover: {h['failed']} failed, gap {h['longest_gap_s']}s; preempt back "
                f"{h['preempt_failed']} failed, gap {h['preempt_longest_gap_s']}s")  # fmt: skip
    if current:
        current.pop().stop_all()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=10, help="failovers per profile, handovers")
    p.add_argument("--profiles", default=",".join(PROFILES), type=lambda s: s.split(","))
    p.add_argument("--parts", default="outage,starve,handover", type=lambda s: s.split(","))
    p.add_argument("--block", type=int, default=2, help="runs of one profile in a row")
    p.add_argument("--starve-seconds", type=float, default=60.0)
    p.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    p.add_argument("--load-interval", type=float, default=0.01, help="s between client requests")
    p.add_argument("--load-timeout", type=float, default=0.3, help="client request timeout (s)")
    p.add_argument("--handover-timeout", type=float, default=1.0,
                   help="client request timeout during handovers (s): a stall of a busy "
                   "machine is no failed request; a broken flow still is")  # fmt: skip
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if not (1 <= args.runs <= 100 and 5 <= args.starve_seconds <= 120):
        p.error("--runs 1..100, --starve-seconds 5..120")
    if any(k.startswith("ka-") for k in args.profiles):
        ensure_keepalived()
    s = new_session("hc-failover-")
    with lab_cluster(s, args.json, args.keep) as c:
        run(args, c, s.res, s.say)
    print(report(s.res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
