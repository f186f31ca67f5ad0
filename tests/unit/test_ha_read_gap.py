"""Heartbeat read gaps (hacontrol.ha.read_gap.ReadGaps, fed by HaTransport): table-driven runs of
reads and ticks on an injected clock (which reads are gaps, which are late, what starts afresh),
and the transport's side: only accepted heartbeats count (not overrides, not drops), a late read
is logged as ``ha.read_late`` (rate-limited, the number suppressed), and the largest gap is in the
status and the gauge ``hacontrol_ha_read_gap_max_seconds{path}``."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest
from structlog.testing import capture_logs

from hacontrol.clock import FakeClock
from hacontrol.ha import packet as p
from hacontrol.ha.read_gap import ReadGaps
from hacontrol.ha.transport import HaTransport
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint

IV, DEAD = 0.2, 0.6  # interval, dead interval (dead_after 3)
A, B = "192.0.2.12:5405", "198.51.100.3:5405"

# (name, events, expected gaps (rounded to ms; None: no gap), expected status per path)
# an event: ("r", path, now, epoch) a read, ("w", now) a tick of the running loop
Want = dict[str, tuple[float, int, int]]
CASES: list[tuple[str, list[tuple[Any, ...]], list[float | None], Want]] = [
    ("first read is no gap", [("r", A, 10.0, 1)], [None], {A: (0.0, 0, 0)}),
    ("steady beats", [("r", A, 10.0, 1), ("r", A, 10.2, 1), ("r", A, 10.41, 1)],
     [None, 0.2, 0.21], {A: (0.21, 2, 0)}),
    ("just under 1.5 intervals is not late", [("r", A, 10.0, 1), ("r", A, 10.299, 1)],
     [None, 0.299], {A: (0.299, 1, 0)}),
    ("just over is", [("r", A, 10.0, 1), ("r", A, 10.301, 1)], [None, 0.301], {A: (0.301, 1, 1)}),
    ("a loop hold of 3 intervals is one late gap, the queue behind it none",
     [("r", A, 10.0, 1), ("r", A, 10.6, 1), ("r", A, 10.6005, 1), ("r", A, 10.601, 1)],
     [None, 0.6, 0.0005, 0.0005], {A: (0.6, 3, 1)}),
    ("a hold past the dead interval with no tick meanwhile is measured",
     [("r", A, 10.0, 1), ("w", 10.1), ("r", A, 11.0, 1), ("w", 11.0)],
     [None, 1.0], {A: (1.0, 1, 1)}),
    ("a peer silent past its dead interval, seen by a tick, starts afresh",
     [("r", A, 10.0, 1), ("w", 10.5), ("w", 10.7), ("r", A, 13.0, 1), ("r", A, 13.2, 1)],
     [None, None, 0.2], {A: (0.2, 1, 0)}),
    ("a tick within the dead interval resets nothing",
     [("r", A, 10.0, 1), ("w", 10.6), ("r", A, 10.65, 1)],
     [None, 0.65], {A: (0.65, 1, 1)}),
    ("a peer restart (new epoch) starts afresh",
     [("r", A, 10.0, 1), ("r", A, 10.5, 2), ("r", A, 10.7, 2)],
     [None, None, 0.2], {A: (0.2, 1, 0)}),
    ("each path on its own",
     [("r", A, 10.0, 1), ("r", B, 10.01, 1), ("r", A, 10.2, 1), ("r", B, 10.51, 1)],
     [None, None, 0.2, 0.5], {A: (0.2, 1, 0), B: (0.5, 1, 1)}),
]  # fmt: skip


@pytest.mark.parametrize(("events", "gaps", "want"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_read_gaps(
    events: list[tuple[Any, ...]], gaps: list[float | None], want: Want
) -> None:
    rg = ReadGaps(IV, DEAD)
    got: list[float | None] = []
    for ev in events:
        if ev[0] == "w":
            rg.watch(ev[1])
            continue
        g = rg.read(ev[1], ev[2], ev[3])
        got.append(None if g is None else round(g.gap, 4))
        if g is not None:
            assert g.late == (g.lateness > IV / 2) and g.lateness == pytest.approx(g.gap - IV)
    assert got == gaps
    st = rg.status()
    assert {k: (v["max"], v["gaps"], v["late"]) for k, v in st.items()} == want
    for v in st.values():
        assert v["late_max"] == (round(max(0.0, float(v["max"]) - IV), 4) if v["gaps"] else 0.0)


def test_bad_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="interval"):
        ReadGaps(0.0, 0.6)
    with pytest.raises(ValueError, match="dead interval"):
        ReadGaps(0.2, 0.1)


KEY = b"unit read gap key 0123456789"
ME = bytes.fromhex("0102030405060708")


class Rig:
    def __init__(self, log_every: float = 5.0) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.got: list[str] = []
        self.overrides = 0
        lo = ipaddress.ip_address("192.0.2.12")
        self.t = HaTransport(
            Endpoint(ipaddress.ip_address("0.0.0.0"), 5405), [Endpoint(lo, 5405)], KEY,
            node="dir-a", epoch=50, metrics=self.metrics, clock=self.clock,
            on_message=lambda m, path, now: self.got.append(path), on_overrides=self.on_over,
            nonce=ME, reads=ReadGaps(IV, DEAD), log_every=log_every,
        )  # fmt: skip
        self.seq = 0

    def on_over(self, msg: p.Message, path: str, now: float) -> None:
        self.overrides += 1

    def feed(self, at: float, **kw: Any) -> None:
        self.clock.now = at
        self.seq += 1
        msg = p.Message(
            type=p.MsgType.HEARTBEAT, node="dir-b", role=p.WireRole.ACTIVE, priority=100,
            effective_priority=100, epoch=7, seq=self.seq, nonce=bytes(range(1, 9))[::-1],
            echo=ME,
        )  # fmt: skip
        msg = dataclasses.replace(msg, **kw)
        self.t.datagram_received(p.encode(msg, KEY), ("192.0.2.12", 5405))

    def gauge(self) -> float | None:
        return self.metrics.registry.get_sample_value(
            "hacontrol_ha_read_gap_max_seconds", {"path": A}
        )


def test_transport_counts_accepted_heartbeats_only_and_logs_late_reads() -> None:
    r = Rig(log_every=5.0)
    with capture_logs() as logs:
        r.feed(100.0)
        r.feed(100.2)
        r.feed(100.9, type=p.MsgType.OVERRIDES)  # not a heartbeat: no read, no gap
        r.feed(101.0, seq=1)  # replayed: dropped, no read
        assert [e for e in logs if e["event"] == "ha.read_late"] == []
        r.feed(101.0, type=p.MsgType.HANDOVER)  # 0.8 s after the last heartbeat read: late
        r.feed(101.2)
        r.feed(101.6)  # late again within log_every: suppressed
        r.feed(107.0)  # 5.4 s: but no tick saw the silence (a held loop): late, logged
    late = [e for e in logs if e["event"] == "ha.read_late"]
    assert r.overrides == 1 and r.t.dropped["replayed"] == 1 and len(r.got) == 6
    assert [(e["gap"], e["suppressed"], e["log_level"]) for e in late] == [
        (0.8, 0, "warning"), (5.4, 1, "warning")]
    assert late[0]["path"] == A and late[0]["interval"] == IV and "late" in late[0]["reason"]
    assert r.gauge() == pytest.approx(5.4)
    st = r.t.read_gaps()[A]
    assert st["gaps"] == 5 and st["late"] == 3 and st["max"] == pytest.approx(5.4)


def test_transport_watch_forgets_a_silent_peer() -> None:
    r = Rig()
    with capture_logs() as logs:
        r.feed(100.0)
        r.t.watch(100.7)  # the running loop's tick: silent past the dead interval 0.6
        r.feed(105.0)  # the peer is back: not a read gap
        r.feed(105.2)
    assert [e for e in logs if e["event"] == "ha.read_late"] == []
    assert r.t.read_gaps()[A]["max"] == pytest.approx(0.2) and r.gauge() == pytest.approx(0.2)


def test_without_a_tracker_nothing_is_measured() -> None:
    r = Rig()
    r.t.reads = None
    r.feed(100.0)
    r.feed(103.0)
    r.t.watch(104.0)
    assert r.t.read_gaps() == {} and r.gauge() is None and len(r.got) == 2
