"""Heartbeat send gaps of a busy director, seen by its real HA peer.

Two real ``hacontrol run`` daemons in two namespaces joined by a veth (198.51.100.2 busy,
198.51.100.3 peer; UDP 5405, interval 200 ms, dead_after 3). The busy one runs the nftables plane
with S services x 16 real servers (default 2,284 x 16 = 36,544 destinations, the issue's "big
table"; the 16 real servers are addresses on the busy namespace's loopback with one listener
process, so 16 checks serve every service); the peer runs the memory plane. A capture process in
the peer's namespace reads every heartbeat the busy node sends (AF_PACKET, kernel receive
timestamps: SO_TIMESTAMPNS) until told to stop. Phases, in order:

* ``first load``: the busy daemon starts (its peer already runs) until its table holds every
  destination (the ``add_dest`` of its ``dataplane.apply`` lines; nothing polls its API);
* ``reload 1 %``: SIGHUP with 1 % of the services changed (one real server's weight) until the
  reload's ``dataplane.apply``;
* ``resync``: 2.5 ``resync_interval`` (two periodic resyncs: full kernel read and compare);
* ``scrape``: ``GET /metrics`` and ``GET /v1/status`` in turn, ``--scrapes`` times each (what an
  operator's Prometheus and ``hacontrol status`` ask; 16 MB and 12 MB at the default size),
  one at a time, each request's seconds and bytes in the last row;
* ``refused NN MB``: SIGHUP with a config file of ``--huge`` MB (the big config followed by a
  list of junk strings under an unknown top-level key: it must be parsed whole before it is
  refused) until the daemon's ``config.reload`` line refusing it (0: no such phase).

For each: its duration, the largest gap between two heartbeats received from the busy node, the
lateness (gap minus the interval) and its ratio to the interval (target: at most 0.5), the
daemon's ``loop.stall`` lines (lateness over 100 ms, with the loop thread's CPU time meanwhile);
the read side: the largest lateness of the busy daemon's ``ha.read_late`` lines in the phase (a
heartbeat from its peer read more than 1.5 intervals after the previous one on its path: its
event loop read late, or the peer sent late; at most one line per 5 s, the others counted as
suppressed, so a phase's figure is a lower bound) and their number;
at the end its ``hacontrol_loop_lag_max_seconds``, its largest read gap since start
(``hacontrol_ha_read_gap_max_seconds``, the largest over its paths), its heartbeat sender
thread's own largest lateness (``hacontrol_ha_beat_late_max_seconds``) and pauses
(``ha.beat_paused``: its event loop silent for 2 intervals), and whether the peer ever
left ``backup``/``active`` as expected (a false failover).

    python3 bench/heartbeat_gap.py [--services 2284] [--resync 8] [--scrapes 3] [--json out.json]

As root; every namespace and process is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from event_to_kernel import epoch, wait

from hacontrol.cli_api import UnixConnection
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp
from hacontrol.lab.scenario import log_events as events

BUSY, PEER = "198.51.100.2", "198.51.100.3"
RS = [f"192.0.2.{i}" for i in range(1, 17)]
HB_PORT, RS_PORT, INTERVAL = 5405, 8080, 0.2

LISTEN = r"""
import socket, sys, time
socks = []
for a in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a, 8080)); s.listen(512); s.setblocking(False); socks.append(s)
print("ready", flush=True)
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    for s in socks:
        try:
            while True:
                c, _ = s.accept(); c.close()
        except BlockingIOError:
            pass
    time.sleep(0.01)
"""

# every UDP datagram from SRC to port 5405 on eth0: its kernel receive time (CLOCK_REALTIME),
# one line each; ends on SIGTERM or after an hour
CAPTURE = r"""
import socket, struct, sys, time
src, port = socket.inet_aton(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind(("eth0", 0))
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
print("ready", flush=True)
deadline = time.monotonic() + 3600
while time.monotonic() < deadline:
    data, anc, _, _ = s.recvmsg(2048, 64)
    if len(data) < 28 or data[9] != 17 or data[12:16] != src:
        continue
    ihl = (data[0] & 15) * 4
    if struct.unpack_from("!H", data, ihl + 2)[0] != port:
        continue
    at = time.time()
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == 35:
            sec, nsec = struct.unpack("qq", raw[:16]); at = sec + nsec / 1e9
    print(f"{at:.6f}", flush=True)
"""


def config(tmp: Path, name: str, services: int, resync: float, bump: int = 0) -> str:
    mine, other = (BUSY, PEER) if name == "busy" else (PEER, BUSY)
    lines = [
        f"node: {{name: {name}}}",
        f'api: {{listen: "unix:{tmp}/{name}.sock"}}',
        "dataplane: {"
        + (f"kind: nftables, nft_table: hcgap, resync_interval: {resync}s, "
           if services else "kind: memory, ")
        + f"state_dir: {tmp}/{name}, keep_on_stop: false}}",
        "logging: {level: info, format: json}",
        "ha: {"
        f'bind: "{mine}:{HB_PORT}", peers: ["{other}:{HB_PORT}"], '
        f"priority: {150 if name == 'busy' else 100}, preempt: false, "
        f"interval: {round(INTERVAL * 1000)}ms, dead_after: 3, secret_file: {tmp}/ha.key, "
        'vips: [{address: "198.51.100.10/24", interface: eth0}], lease: 3s}',
        "services:" + ("" if services else " []"),
    ]
    check = "check: {type: tcp, interval: 2s, timeout: 1s, rise: 1, fall: 3}"
    for i in range(services):
        weight = 2 if i < bump else 1
        rs = ", ".join(f"{{address: {a}, port: {RS_PORT}, weight: {weight if j == 0 else 1}}}"
                       for j, a in enumerate(RS))  # fmt: skip
        lines.append(
            f"  - {{name: s{i}, vip: 203.0.113.{1 + i // 250}, port: {1000 + i % 250}, "
            f"scheduler: wrr, {check}, real_servers: [{rs}]}}"
        )
    return "\n".join(lines) + "\n"


def fetch(sock: Path, path: str) -> bytes | None:
    conn = UnixConnection(str(sock), 60)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    except OSError:
        return None
    finally:
        conn.close()


def metrics(sock: Path, *names: str) -> list[float | None]:
    """The value of each series ``names`` in one scrape, the largest over its labels (None:
    absent)."""
    body = (fetch(sock, "/metrics") or b"").decode()
    found: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        series, _, rest = line.rpartition("} ") if "{" in line else line.partition(" ")
        name = series.partition("{")[0]
        if name in names and rest:
            v = float(rest.split()[0])
            found[name] = max(v, found.get(name, v))
    return [found.get(n) for n in names]





def gaps(times: list[float], start: float, end: float) -> dict[str, Any]:
    seen = [t for t in times if start <= t <= end]
    diffs = [b - a for a, b in itertools.pairwise(seen)]
    worst = max(diffs, default=0.0)
    late = max(0.0, worst - INTERVAL)
    top = sorted(diffs, reverse=True)[:4]
    return {"heartbeats": len(seen), "max_gap_ms": round(worst * 1000, 1),
            "top_gaps_ms": [round(d * 1000) for d in top],
            "late_ms": round(late * 1000, 1), "late_ratio": round(late / INTERVAL, 2)}  # fmt: skip


def huge_config(good: str, megabytes: int) -> str:
    """``good`` followed by ``megabytes`` MB of junk strings under an unknown key (refused)."""
    line = "  - " + "x" * 60 + "\n"
    return good + "junk:\n" + line * (megabytes * (1 << 20) // len(line))


def run(
    services: int, resync: float, tmp: Path, scrapes: int = 3, huge: int = 50
) -> list[dict[str, Any]]:
    (tmp / "ha.key").write_text(secrets.token_hex(32) + "\n")
    (tmp / "ha.key").chmod(0o600)
    with NetnsLab() as lab:
        busy, peer = lab.add("busy", forward=True), lab.add("peer", forward=True)
        lab.link(busy, "eth0", peer, "eth0")
        busy.addr("eth0", f"{BUSY}/24")
        peer.addr("eth0", f"{PEER}/24")
        for a in RS:
            busy.addr("lo", f"{a}/32")
        busy.popen(sys.executable, "-c", LISTEN, *RS, stdout=subprocess.DEVNULL)
        wait_tcp(busy, RS[-1], RS_PORT)
        cap_out = tmp / "capture.txt"
        with open(cap_out, "w") as f:
            cap = peer.popen(sys.executable, "-c", CAPTURE, BUSY, str(HB_PORT), stdout=f)
        wait(lambda: cap_out.read_text().startswith("ready"), "the capture", 30)
        logs = {n: tmp / f"{n}.log" for n in ("busy", "peer")}
        cfgs = {n: tmp / f"{n}.yaml" for n in ("busy", "peer")}
        cfgs["peer"].write_text(config(tmp, "peer", 0, resync))
        cfgs["busy"].write_text(config(tmp, "busy", services, resync))
        procs: dict[str, subprocess.Popen[Any]] = {}

        def start(name: str, ns: Ns) -> None:
            with open(logs[name], "ab") as out:
                procs[name] = ns.popen(sys.executable, "-m", "hacontrol", "run", "-c",
                                       str(cfgs[name]), stdout=out, stderr=out)  # fmt: skip

        def roles(name: str) -> list[str]:
            return [str(e.get("to_role")) for e in events(logs[name], "ha.transition")]

        start("peer", peer)
        try:
            wait(lambda: "active" in roles("peer"), "the peer active", 60)
        except SystemExit:
            print(logs["peer"].read_text()[-3000:], file=sys.stderr)
            raise
        dests = services * len(RS)
        phases: list[tuple[str, float, float]] = []

        def added() -> int:  # destinations the busy daemon put in its table (its log)
            return sum(e["ops"].get("add_dest", 0) for e in events(logs["busy"], "dataplane.apply"))

        t0 = time.time()
        start("busy", busy)
        wait(lambda: added() >= dests, "the first load", 600)
        t1 = time.time()
        phases.append(("first load", t0, t1))
        time.sleep(1.0)
        n = len(events(logs["busy"], "dataplane.apply"))
        cfgs["busy"].write_text(config(tmp, "busy", services, resync, bump=max(1, services // 100)))
        t0 = time.time()
        os.killpg(procs["busy"].pid, signal.SIGHUP)
        wait(lambda: len(events(logs["busy"], "dataplane.apply")) > n, "the reload's apply", 300)
        t1 = time.time()
        phases.append(("reload 1 %", t0, t1))
        t0 = time.time()
        time.sleep(resync * 2.5)  # two periodic resyncs (and nothing else to do)
        t1 = time.time()
        phases.append(("resync", t0, t1))
        requests = []  # what an operator's Prometheus and `hacontrol status` ask, one at a time
        t0 = time.time()
        for path in ("/metrics", "/v1/status") * scrapes:
            s = time.monotonic()
            body = fetch(tmp / "busy.sock", path)
            requests.append([path, round(time.monotonic() - s, 2), len(body or b"")])
        t1 = time.time()
        if scrapes:
            phases.append((f"scrape x{scrapes} + status x{scrapes}", t0, t1))
        if huge:
            good = cfgs["busy"].read_text()
            cfgs["busy"].write_text(huge_config(good, huge))
            n = len(events(logs["busy"], "config.reload"))
            t0 = time.time()
            os.killpg(procs["busy"].pid, signal.SIGHUP)
            wait(lambda: len(events(logs["busy"], "config.reload")) > n, "the refusal", 600)
            t1 = time.time()
            last = events(logs["busy"], "config.reload")[-1]
            if last.get("result") == "ok":
                raise SystemExit(f"the {huge} MB config was not refused: {last}")
            phases.append((f"refused {huge} MB", t0, t1))
            cfgs["busy"].write_text(good)
        names = ("hacontrol_loop_lag_max_seconds", "hacontrol_ha_beat_late_max_seconds",
                 "hacontrol_ha_read_gap_max_seconds")  # fmt: skip
        lag, beat_late, read_gap = metrics(tmp / "busy.sock", *names)
        cap.terminate()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(60)
        times = [float(x) for x in cap_out.read_text().split()[1:]]
        failover = [r for r in roles("peer") if r not in ("active", "backup")]
        flips = len(roles("peer"))
        stalls = [(epoch(e["timestamp"]), e.get("lag_ms"), e.get("cpu_ms"))
                  for e in events(logs["busy"], "loop.stall")]  # fmt: skip
        reads = [(epoch(e["timestamp"]), float(e.get("lateness", 0.0)), int(e.get("suppressed", 0)))
                 for e in events(logs["busy"], "ha.read_late")]  # fmt: skip
        out = []
        for name, a, b in phases:
            within = [[ms, c] for t, ms, c in stalls if a <= t <= b]
            late_reads = [(late, n) for t, late, n in reads if a <= t <= b]
            worst_read = max((late for late, _ in late_reads), default=0.0)
            row = {"phase": name, "seconds": round(b - a, 2), **gaps(times, a, b),
                   "stalls_lag_cpu_ms": within,
                   "read_late_ms": round(worst_read * 1000, 1),
                   "read_late_ratio": round(worst_read / INTERVAL, 2),
                   "read_late_lines": len(late_reads),
                   "read_late_suppressed": sum(n for _, n in late_reads)}  # fmt: skip
            out.append(row)
        out.append({"peer_transitions": flips, "odd": failover, "services": services,
                    "destinations": dests, "interval_ms": INTERVAL * 1000,
                    "loop_lag_max_ms": None if lag is None else round(lag * 1000, 1),
                    "beat_late_max_ms": None if beat_late is None else round(beat_late * 1000, 1),
                    "read_gap_max_ms": None if read_gap is None else round(read_gap * 1000, 1),
                    "beat_pauses": len(events(logs["busy"], "ha.beat_paused")),
                    "requests_path_s_bytes": requests})  # fmt: skip
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=2284)
    ap.add_argument("--resync", type=float, default=8.0)
    ap.add_argument("--scrapes", type=int, default=3, help="GET /metrics and /v1/status N times")
    ap.add_argument("--huge", type=int, default=50, help="MB of the refused config (0: none)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="copy the daemons' logs and configs here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (network namespaces, nftables)")
    with tempfile.TemporaryDirectory(prefix="hcgap-") as tmp:
        try:
            rows = run(args.services, args.resync, Path(tmp), args.scrapes, args.huge)
        finally:
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                for f in Path(tmp).glob("*.[ly]*"):
                    shutil.copy(f, args.keep / f.name)
    for r in rows:
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
