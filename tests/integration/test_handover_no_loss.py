"""Planned VIP moves lose no request: two real daemons (the lab's HA cluster, nftables NAT).

``hacontrol lab``'s two-director cluster (hacontrol.lab.topology.Cluster, ha=True) with a client
sending a new connection every 20 ms (1 s timeout) through the VIP while the VIP group moves back
and forth: ``hacontrol drill handover`` on a, then on b, three times, then once more on a and
back by preemption. Zero failed requests over all eight moves.

The continuous load alone catches a broken hand-off only by chance (a connection must be in
flight at the move), so before every move the client also opens three connections and sends
half a request on each (the real servers wait up to 10 s for the rest); after the move it
sends the rest. Their NAT state is on the director that was active, their packets now reach the
other one: each must still be answered (by ``hacontrol.ha.handoff``: the new active hands them
to the old one during its drain period). Without the hand-off every one of them fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.scenario import Watch, in_table
from hacontrol.lab.topology import API, PORT, REAL_SERVERS, TARGET, VIP, Cluster, Timing

pytestmark = pytest.mark.root

A, B = "director-a", "director-b"

HOLD = r"""
import json, socket, sys
socks = []
for _ in range(int(sys.argv[3])):
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"GET / HTTP/1.0\r\n")
    socks.append(s)
print("open", flush=True)
sys.stdin.readline()
out = []
for s in socks:
    try:
        s.sendall(b"Host: held\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        out.append({"ok": head.startswith(b"HTTP/1.1 200"), "server": body.decode().strip()})
    except OSError as e:
        out.append({"ok": False, "error": type(e).__name__})
print(json.dumps(out), flush=True)
"""


class Held:
    """Connections opened through the VIP before a move, half a request sent on each."""

    def __init__(self, c: Cluster, n: int = 3) -> None:
        argv = (sys.executable, "-c", HOLD, VIP, str(PORT), str(n))
        pipe = subprocess.PIPE
        self.p = c.client.popen(*argv, stdin=pipe, stdout=pipe, text=True)
        assert self.p.stdout is not None
        line = self.p.stdout.readline().strip()  # bounded by the script's 5 s socket timeout
        assert line == "open", f"held connections not opened: {line!r}"

    def finish(self) -> list[dict[str, Any]]:
        """Send the rest of each request; the answers."""
        out, _ = self.p.communicate("go\n", timeout=30)
        return list(json.loads(out.strip().splitlines()[-1]))


def role(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc.get("role") == name


def serving(doc: dict[str, Any]) -> bool:
    return doc.get("role") == "active" and all(in_table(doc, a) for a in REAL_SERVERS.values())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with NetnsLab() as lab:
        # a's preemption must not race the drills on b: it waits 6 s, not the lab's 2 s
        c = Cluster(lab, tmp_path, ha=True, timing=Timing(preempt_delay=6.0))
        try:
            yield c
        finally:
            for run in c.runs:
                run.stop()
            for d in list(c.daemons):
                c.kill_daemon(d)


def test_planned_moves_back_and_forth_fail_no_request(cluster: Cluster) -> None:
    c = cluster
    c.build()
    for d in (A, B):
        c.start_daemon(d)
    watch = {d: Watch(c, d) for d in (A, B)}
    t0 = time.monotonic()
    watch[A].until(serving, t0, 60, "director-a active with three servers up")
    watch[B].until(role("backup"), t0, 60, "director-b backup")

    load = traffic.Load(c.runs, c.client, TARGET, 20_000, interval=0.02, timeout=1.0,
                        duration=180)  # fmt: skip
    t_load = time.monotonic()
    deadline = t_load + 30
    while not any(r.ok for r in load.requests()):
        assert time.monotonic() < deadline, "no answer through the VIP before the moves"
        time.sleep(0.05)

    held_answers: list[tuple[str, dict[str, Any]]] = []
    moves: list[tuple[str, float]] = []

    def move(frm: str, to: str, by_drill: bool = True) -> None:
        held = Held(c)
        t = time.monotonic()
        if by_drill:
            r = c.hacontrol(frm, "drill", "handover", "--json", "--api", API, "-c",
                            str(c.config_path(frm)))  # fmt: skip
            assert r.returncode == 0, r.stderr or r.stdout
            assert json.loads(r.stdout).get("ok") is True, r.stdout
        limit = 30 if by_drill else c.timing.preempt_delay + 30
        watch[to].until(role("active"), t, limit, f"{to} active")
        watch[frm].until(role("backup"), t, 30, f"{frm} backup")
        moves.append((f"{frm}->{to}" + ("" if by_drill else " (preemption)"), t))
        held_answers.extend((moves[-1][0], a) for a in held.finish())

    for _ in range(3):
        move(A, B)
        move(B, A)
    move(A, B)
    move(B, A, by_drill=False)  # a has the higher priority: it preempts after preempt_delay

    t_end = time.monotonic()
    deadline = t_end + 30
    while not any(r.ok and r.t >= t_end for r in load.requests()):
        assert time.monotonic() < deadline, "no answer through the VIP after the moves"
        time.sleep(0.05)
    load.stop()
    reqs = traffic.between(load.requests(), t_load, t_end)
    bad = [r for r in reqs if not r.ok]
    where = [(round(r.t - t_load, 3), r.error) for r in bad]
    print(f"{len(moves)} moves, {len(reqs)} requests, {len(bad)} failed; longest gap "
          f"{traffic.outage(reqs, t_load, t_end):.3f}s; moves at "
          f"{[(m, round(t - t_load, 2)) for m, t in moves]}")  # fmt: skip
    failed_held = [(m, a) for m, a in held_answers if not a.get("ok")]
    print(f"connections open across a move: {len(held_answers)}, failed: {len(failed_held)}")
    assert len(moves) == 8
    assert len(reqs) >= 100, f"too few requests to judge: {len(reqs)}"
    assert len(held_answers) == 3 * len(moves)
    assert not bad and not failed_held, (
        f"failed requests (s after the load started, error): {where}; "
        f"connections open across a move that failed: {failed_held}"
    )
    servers = {a.get("server") for _, a in held_answers}
    assert servers <= set(REAL_SERVERS), servers

    for d in (A, B):  # the hand-off did the work: each node drained when it took the VIPs
        drains = [json.loads(ln) for ln in c.log_path(d).read_text().splitlines()
                  if '"ha.handoff_drain"' in ln]  # fmt: skip
        assert any(e.get("state") == "begin" for e in drains), f"{d} never drained"
