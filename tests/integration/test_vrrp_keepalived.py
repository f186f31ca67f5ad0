"""hacontrol in ``ha.protocol: vrrp3`` paired with the real keepalived (Debian's 2.2.7), in the
lab's HA cluster (root; namespaces; documentation addresses only).

Each test runs a mixed pair (hacontrol.lab.mixed) through its whole life and checks, on the way:
the backup takes over when the master dies (SIGKILL; its addresses gone as a reboot takes them),
the higher priority preempts when it comes back, a clean stop (SIGTERM) hands over through
priority 0 (the new master's reason says so). A sampler reads both directors' roles and VIPs for
the whole run: never two holders of the VIP group, never two masters, for longer than one
advertisement interval. tcpdump (an independent decoder, on director-a's port of the inside
bridge) captures every advertisement; its verbose decoding must show VRRPv3 advertisements of
our virtual router with valid checksums (tcpdump checks them with the pseudo-header), TTL 255,
the configured priorities, interval and VIP group, from both routers, and the priority 0 of
the clean stop. One test is multicast (224.0.0.18, keepalived master first), the other
unicast (hacontrol master first).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab.mixed import VRID, Kind, MixedPair
from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.topology import API, GATEWAY, INSIDE_IF, PUBLIC_IF, VIP, Cluster, Timing

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("keepalived") or not shutil.which("tcpdump"),
        reason="needs root, keepalived and tcpdump",
    ),
]

A, B = "director-a", "director-b"  # priorities 150 and 100 (hacontrol.lab.topology.PAIR)
A_IN, B_IN = "192.0.2.11", "192.0.2.12"


def until(cond: Callable[[], Any], timeout: float, what: str, pair: MixedPair | None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            logs = {n: pair.log_text(n)[-2500:] for n in (A, B)} if pair else {}
            raise AssertionError(f"timed out waiting for {what}; logs: {logs}")
        time.sleep(0.1)


class Sampler:
    """Both directors' roles and VIP holders every ~0.1 s (bounded: at most 10 minutes)."""

    def __init__(self, pair: MixedPair) -> None:
        self.pair = pair
        self.samples: list[tuple[float, list[str], list[str]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < end:
            holders = self.pair.holders()
            masters = [n for n in (A, B) if self.pair.role(n) == "active"]
            self.samples.append((time.monotonic(), holders, masters))
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(timeout=30)

    def longest_double(self, index: int) -> float:
        """The longest run of consecutive samples with two holders (1) / masters (2), in s
        (from its first to its last sample)."""
        longest, first = 0.0, None
        for s in self.samples:
            if len(s[index]) > 1:
                first = s[0] if first is None else first
                longest = max(longest, s[0] - first)
            else:
                first = None
        return longest


class Capture:
    """tcpdump on director-a's port of the switch's inside bridge (it sees a's unicast both
    ways, which the bridge device itself does not): every IP protocol 112 packet, to a file."""

    def __init__(self, c: Cluster, path: Path) -> None:
        self.c, self.path = c, path
        self.proc = c.ns("switch").popen("tcpdump", "-i", "in-a", "-U", "--immediate-mode", "-w",
                                         str(path),
                                         "ip proto 112", stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)  # fmt: skip
        until(path.exists, 30, "tcpdump started", None)

    def decoded(self) -> list[str]:
        """tcpdump -vv's decoding, one line per packet (its two lines joined)."""
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        r = subprocess.run(["tcpdump", "-nr", str(self.path), "-vv"], capture_output=True,
                           text=True, timeout=60, check=True)  # fmt: skip
        out, cur = [], ""
        for line in r.stdout.splitlines():
            if line.startswith(" "):
                out.append(cur + " " + line.strip())
            else:
                cur = line
        return out


ADV = re.compile(
    r"ttl (?P<ttl>\d+),.* (?P<src>[\d.]+) > (?P<dst>[\d.]+): VRRPv(?P<v>\d), (?P<type>\w+), "
    r"vrid (?P<vrid>\d+), prio (?P<prio>\d+), intvl (?P<intvl>\d+)cs, length \d+,"
    r"(?P<bad> \(bad vrrp cksum [0-9a-f]+\),)? addrs\(\d+\): (?P<addrs>\S+)"
)


def adverts(lines: list[str]) -> list[dict[str, str]]:
    out = []
    for line in lines:
        m = ADV.search(line)
        assert m is not None, f"tcpdump decoded something else: {line}"
        out.append(m.groupdict())
    return out


def check_wire(lines: list[str], *, hc: str, ka: str, hc_prio: int, cs: int, dst: str) -> None:
    ads = adverts(lines)
    assert ads, "no advertisement captured"
    for a in ads:
        assert (a["v"], a["type"], a["vrid"], a["ttl"]) == ("3", "Advertisement", str(VRID), "255")
        assert a["bad"] is None, f"bad checksum: {a}"
        assert sorted(a["addrs"].split(",")) == sorted([VIP, GATEWAY])
        assert a["dst"] in (dst, hc, ka)
    ours = [a for a in ads if a["src"] == hc]
    theirs = [a for a in ads if a["src"] == ka]
    assert ours and theirs, "advertisements from both routers"
    assert {a["prio"] for a in ours} <= {str(hc_prio), "0"} and {a["intvl"] for a in ours} == {
        str(cs)
    }
    assert all(a["dst"] == dst for a in ours)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    lab = NetnsLab()
    try:
        c = Cluster(lab, tmp_path_factory.mktemp("vrrp"), ha=True, timing=Timing())
        c.build()
        yield c
    finally:
        for name in (A, B):
            c.kill_daemon(name, signal.SIGKILL)
        lab.close()


@pytest.fixture
def pair_of(cluster: Cluster) -> Iterator[Callable[..., MixedPair]]:
    made: list[MixedPair] = []

    def make(kinds: dict[str, Kind], **kw: Any) -> MixedPair:
        p = MixedPair(cluster, kinds, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop_all()


def crash(pair: MixedPair, name: str) -> None:
    """The director dies: its VIP mover SIGKILLed, its addresses gone as a reboot takes them."""
    pair.stop(name, signal.SIGKILL)
    for cidr, ifname in ((f"{VIP}/24", PUBLIC_IF), (f"{GATEWAY}/24", INSIDE_IF)):
        pair.c.ns(name).ip("addr", "del", cidr, "dev", ifname, check=False)


def only(pair: MixedPair, active: str, backup: str) -> Callable[[], bool]:
    return lambda: (pair.role(active) == "active" and pair.role(backup) == "backup"
                    and pair.holders() == [active])  # fmt: skip


def test_multicast_keepalived_master_dies_then_preempts_then_stops_cleanly(
    cluster: Cluster, pair_of: Callable[..., MixedPair], tmp_path: Path
) -> None:
    pair = pair_of({A: "keepalived", B: "hacontrol"}, advert=1.0, unicast=False)
    cap = Capture(cluster, tmp_path / "mc.pcap")
    with Sampler(pair) as s:
        for n in (A, B):
            pair.start(n)
        until(only(pair, A, B), 90, "keepalived (a) master, hacontrol (b) backup", pair)
        check_status_and_drill(cluster, B, peer=A_IN)
        crash(pair, A)
        until(only_holder(pair, B), 60, "hacontrol (b) takes over from the dead keepalived", pair)
        assert "Master_Down_Interval" in pair.log_text(B)
        pair.start(A)  # keepalived back, priority 150: it preempts hacontrol
        until(only(pair, A, B), 60, "keepalived (a) preempts", pair)
        assert "with a higher priority (150)" in pair.log_text(B)
        pair.stop(A, signal.SIGTERM)  # clean stop: priority 0, hacontrol takes over at skew
        until(only_holder(pair, B), 30, "hacontrol (b) takes over at keepalived's stop", pair)
        assert "the master stopped (priority 0)" in pair.log_text(B)
    lines = cap.decoded()
    check_wire(lines, hc=B_IN, ka=A_IN, hc_prio=100, cs=100, dst="224.0.0.18")
    assert any(a["src"] == A_IN and a["prio"] == "0" for a in adverts(lines))
    assert s.longest_double(1) < 1.0, "two VIP holders beyond one advertisement interval"
    assert s.longest_double(2) < 1.0, "two masters beyond one advertisement interval"


def check_status_and_drill(c: Cluster, name: str, peer: str) -> None:
    """A backup's status says the protocol, the VRRP state, the master heard and what is
    unavailable; a drill is refused (409) with the reason."""
    r = c.hacontrol(name, "status", "--api", API, "--json")
    ha = json.loads(r.stdout)["ha"]
    assert ha["protocol"] == "vrrp3" and ha["vrrp"]["state"] == "BACKUP"
    assert ha["vrrp"]["destinations"] == ["224.0.0.18"] and ha["peer"]["name"] == peer
    assert ha["peer"]["priority"] == 150 and ha["peer"]["alive"]
    assert {u["feature"] for u in ha["unavailable"]} >= {
        "authentication", "health_summaries", "drills", "handover_without_loss",
        "replay_freshness",
    }  # fmt: skip
    assert ha["heartbeats"]["received"]["vrrp"] > 0 and ha["heartbeats"]["sent"]["vrrp"] == 0
    d = c.hacontrol(name, "drill", "handover", "--api", API, "-c", str(c.config_path(name)))
    assert d.returncode != 0 and "409" in d.stderr + d.stdout and "vrrp3" in d.stderr + d.stdout


def only_holder(pair: MixedPair, name: str) -> Callable[[], bool]:
    return lambda: pair.role(name) == "active" and pair.holders() == [name]


def test_unicast_hacontrol_master_dies_then_preempts_then_stops_cleanly(
    cluster: Cluster, pair_of: Callable[..., MixedPair], tmp_path: Path
) -> None:
    pair = pair_of({A: "hacontrol", B: "keepalived"}, advert=0.5, unicast=True)
    cap = Capture(cluster, tmp_path / "uc.pcap")
    with Sampler(pair) as s:
        for n in (A, B):
            pair.start(n)
        until(only(pair, A, B), 90, "hacontrol (a) master, keepalived (b) backup", pair)
        crash(pair, A)
        until(only_holder(pair, B), 60, "keepalived (b) takes over from the dead hacontrol", pair)
        pair.start(A)  # hacontrol back, priority 150: it preempts keepalived
        until(only(pair, A, B), 60, "hacontrol (a) preempts", pair)
        assert "preempt: the master's priority 100 is lower than ours (150)" in pair.log_text(A)
        pair.stop(A, signal.SIGTERM)  # clean stop: priority 0, keepalived takes over at skew
        until(only_holder(pair, B), 30, "keepalived (b) takes over at hacontrol's stop", pair)
        assert "priority 0" in pair.log_text(B)  # keepalived logs the priority 0 it received
    lines = cap.decoded()
    check_wire(lines, hc=A_IN, ka=B_IN, hc_prio=150, cs=50, dst=B_IN)
    assert any(a["src"] == A_IN and a["prio"] == "0" for a in adverts(lines))
    assert s.longest_double(1) < 0.5, "two VIP holders beyond one advertisement interval"
    assert s.longest_double(2) < 0.5, "two masters beyond one advertisement interval"


def test_migration_end_two_hacontrol_in_vrrp_mode_then_the_switch_to_the_own_protocol(
    cluster: Cluster, pair_of: Callable[..., MixedPair]
) -> None:
    """docs/migrate-from-keepalived.md, steps 4-5: two hacontrol daemons in VRRP mode pair with
    each other; then the backup stops, the master is killed (the VIPs stay for their lease) and
    restarted with the own protocol: it adopts them, the VIP group never leaves it; the other
    joins as backup over the own protocol. The lease is long so the restart outlasts it on a
    loaded machine too (what is tested is the adoption, not how fast a daemon starts)."""
    pair = pair_of({A: "hacontrol", B: "hacontrol"}, advert=0.5, unicast=False, lease=30.0)
    for n in (A, B):
        pair.start(n)
    until(only(pair, A, B), 90, "two hacontrol in VRRP mode: a master, b backup", pair)
    pair.stop(B, signal.SIGTERM)  # the backup stops: nothing moves
    with Sampler(pair) as s:
        pair.stop(A, signal.SIGKILL)  # the master killed: its VIPs stay for their lease
        cluster.write_config(A)  # the lab's own-protocol config (bind, peers, secret_file)
        offset = cluster.log_path(A).stat().st_size
        cluster.start_daemon(A)
        until(lambda: pair.role(A) == "active", 60, "a active over the own protocol", pair)
        with open(cluster.log_path(A)) as f:
            f.seek(offset)
            new = f.read()
        assert '"ha.start"' in new and '"vrrp.start"' not in new
        cluster.write_config(B)
        cluster.start_daemon(B)
        until(lambda: pair.role(B) == "backup" and pair.holders() == [A], 60,
              "b backup over the own protocol", pair)  # fmt: skip
    assert all(h == [A] for _, h, _ in s.samples), "the VIP group stayed on a, alone"
