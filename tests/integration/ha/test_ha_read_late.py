"""Heartbeat read gaps on real UDP sockets (loopback): two real HaRunners, each on an event loop
in a thread of its own (one director each), the periodic heartbeats sent by their sender
processes. While both loops run freely the backup logs no ``ha.read_late``; when the backup's loop
is held (a ``time.sleep`` callback on it, in-process) for 3 intervals, shorter than both the stall
window and the dead interval, the active's heartbeats queue in the backup's socket and are read
after the hold: the backup logs ``ha.read_late`` for the active's path with a gap at least the
hold, its gauge ``hacontrol_ha_read_gap_max_seconds{path}`` and its status show at least the hold,
and it never takes over. No timing asserts beyond the hold's known lower bound; the interval is
long (0.5 s: a read is late past 0.75 s) so a busy test machine does not make the free-running
phase late."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from looppair import Pair, loopback_pair
from structlog.testing import capture_logs

KEY = b"read gap test key 0123456789"
INTERVAL = 0.5
DEAD_AFTER = 6  # 3 s
STALL = 6.0  # the stall window: 3 s
HOLD = 3 * INTERVAL  # late (> 1.5 intervals), short of the stall window and the dead interval


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with loopback_pair(tmp_path, KEY, interval=INTERVAL, dead_after=DEAD_AFTER, stall=STALL) as p:
        yield p


def test_a_held_loop_reads_the_peers_heartbeats_late(pair: Pair) -> None:
    runners, loops, port = pair
    a, b = runners["a"], runners["b"]
    path = f"127.0.0.1:{port['a']}"  # the active's heartbeats, as the backup reads them

    def received() -> int:
        return b.status()["heartbeats"]["received"].get(path, 0)

    async def until(cond: Any, within: float) -> None:
        await b.wait_until(cond, within)

    with capture_logs() as logs:
        loops["b"].run(until(lambda: (a.role, b.role) == ("active", "backup"), 30.0), 40.0)
        loops["b"].run(until(lambda: b.fsm.peer_alive(b.clock()), 30.0), 40.0)
        n0 = received()
        loops["b"].run(until(lambda: received() >= n0 + 8, 30.0), 40.0)  # free running
        free = [e for e in logs if e["event"] == "ha.read_late"]
        gaps = b.status()["heartbeats"]["read_gaps"][path]
        assert free == [], f"a late read while both loops ran freely: {free}"
        assert gaps["gaps"] >= 7 and gaps["late"] == 0
        n1 = received()
        loops["b"].hold(HOLD)
        loops["b"].run(until(lambda: received() >= n1 + 3, 30.0), 40.0)  # read after the hold
    late = [e for e in logs if e["event"] == "ha.read_late" and e["path"] == path]
    assert late, "no ha.read_late after a held loop"
    assert late[0]["gap"] >= HOLD and late[0]["interval"] == INTERVAL
    assert late[0]["log_level"] == "warning" and late[0]["reason"]
    gauge = b.metrics.registry.get_sample_value(
        "hacontrol_ha_read_gap_max_seconds", {"path": path}
    )
    assert gauge is not None and gauge >= HOLD
    st = b.status()["heartbeats"]["read_gaps"][path]
    assert st["max"] >= HOLD and st["late_max"] >= HOLD - INTERVAL and st["late"] >= 1
    assert (a.role, b.role) == ("active", "backup")
    took = b.metrics.registry.get_sample_value(
        "hacontrol_ha_transitions_total", {"from_role": "backup", "to_role": "active"}
    )
    assert took is None, "the backup took over from a live active"
