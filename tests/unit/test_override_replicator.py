"""Two ``Replicator`` s (hacontrol.overrides.replicate) joined through the real packet codec
(encode, MAC, decode) on a hand-moved clock: a command is pushed at once, a partition heals by
anti-entropy (each side's records reach the other, conflicting writes settle on the higher
version on both), a restarted node with an empty file is refilled, sends stay within their
bounds (records per packet, bytes per packet, packets per second), and whatever the peer sends
that does not decode is refused and counted, never raised."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ha_sim import World, elected, sim
from ha_sim import wait_until as wait

from hacontrol.cli_overrides import render_overrides
from hacontrol.ha import packet as pk
from hacontrol.overrides import wire
from hacontrol.overrides.core import Override, Version
from hacontrol.overrides.manager import OverrideManager
from hacontrol.overrides.replicate import Replicator
from tests.unit.test_override_sync import CFG, RS, manager

KEY = b"override replicator test key 0001"
PEER = {"a": "b", "b": "a"}


@dataclass
class Link:
    """Both nodes, and the wire between them (``up`` False: every packet is lost)."""

    tmp: Path
    now: float = 0.0
    up: bool = True
    m: dict[str, OverrideManager] = field(default_factory=dict)
    r: dict[str, Replicator] = field(default_factory=dict)
    sent: list[tuple[str, float, bytes]] = field(default_factory=list)  # (from, at, packet)

    def node(self, name: str, **kw: Any) -> None:
        m = manager(name, self.tmp / name)
        r = Replicator(m, self.sender(name), node=name, clock=lambda: self.now, **kw)
        m.on_change = r.changed
        self.m[name], self.r[name] = m, r

    def sender(self, frm: str) -> Callable[[bytes], int]:
        def send(payload: bytes) -> int:
            msg = pk.Message(pk.MsgType.OVERRIDES, frm, pk.WireRole.BACKUP, 100, 100, 1, 1,
                             payload=payload)  # fmt: skip
            data = pk.encode(msg, KEY)
            assert len(data) <= pk.MAX_PACKET
            if not self.up:
                return 0
            self.sent.append((frm, self.now, data))
            self.r[PEER[frm]].received(pk.decode(data, KEY), "path", self.now)
            return 1

        return send

    def run(self, seconds: float, dt: float = 0.02) -> None:
        end = self.now + seconds
        while self.now < end:
            for r in self.r.values():
                r.step(self.now)
            self.now += dt

    def agree(self) -> bool:
        a, b = self.m["a"].records, self.m["b"].records
        for name, r in self.r.items():  # the digest kept per change is the one of the set
            assert r.digest() == wire.set_digest(self.m[name].records.values())
        return a == b and all(r.status()["agree"] for r in self.r.values())


@pytest.fixture
def link(tmp_path: Path) -> Link:
    lk = Link(tmp_path)
    lk.node("a")
    lk.node("b")
    return lk


def test_a_command_is_pushed_at_once(link: Link) -> None:
    link.run(1.5)
    assert link.agree()
    link.sent.clear()
    link.m["a"].command("drain", "web", RS[0])
    link.r["a"].step(link.now)  # the next step, not the next summary
    assert link.m["b"].records == link.m["a"].records
    assert [f for f, _, _ in link.sent] == ["a"]
    link.run(1.5)
    assert link.agree()
    st = link.r["b"].status()
    assert st["records_moved"]["taken"] == 1 and st["last_sync_ago"] is not None
    assert st["peer"] == "a" and st["refused"] == {}


def test_partition_heals_with_last_writer_wins(link: Link) -> None:
    link.up = False
    link.m["a"].command("disable", "web", RS[0])  # counter 1 at a
    link.m["b"].command("weight", "web", RS[1], weight=7)  # counter 1 at b
    link.m["b"].command("drain", "web", RS[0])  # counter 2 at b: newer than a's disable
    link.m["a"].command("clear", "web", RS[2])
    link.run(3.0)
    assert link.m["a"].records != link.m["b"].records
    link.up = True
    link.run(6.0)
    assert link.agree()
    got = {k[1]: (o.action, str(o.version)) for k, o in link.m["a"].records.items()}
    assert got == {RS[0]: ("drain", "b#2"), RS[1]: ("weight", "b#1"), RS[2]: ("clear", "a#2")}
    for name, counter in (("a", 3), ("b", 4)):  # a change is newer than everything seen
        assert link.m[name].command("enable", "web", RS[0])[0].version.counter == counter
        link.run(0.1)
    assert link.m["a"].records[("web", RS[0])].version == Version(4, "b")


def test_restart_with_a_lost_file_is_refilled(link: Link) -> None:
    for i, s in enumerate(RS):
        link.m["a"].command("weight", "web", s, weight=i + 1)
    link.run(2.0)
    assert link.agree()
    for f in (link.tmp / "b").iterdir():
        f.unlink()
    link.node("b")  # restarted, nothing remembered
    assert link.m["b"].records == {}
    link.run(5.0)
    assert link.agree() and link.m["b"].counter == link.m["a"].counter
    assert manager("b", link.tmp / "b").records == link.m["a"].records  # and written down


def test_sends_stay_within_their_bounds(link: Link) -> None:
    big = [Override("web", f"198.51.100.{i % 200 + 1}:{1000 + i // 200}", "disable",
                         Version(i + 1, "a"), 1.0) for i in range(1000)]  # fmt: skip
    link.m["a"].merge_remote(big, "x")  # a large set b has never seen
    r = link.r["a"]
    link.run(30.0)
    assert link.agree()
    from_a = [(t, data) for f, t, data in link.sent if f == "a"]
    for _t, data in from_a:
        sec = wire.decode_section(pk.decode(data, KEY).payload)
        assert len(sec.records) <= wire.MAX_PER_PACKET
    times = [t for t, _ in from_a]
    for start in times:  # any one-second window holds at most burst + rate packets
        assert sum(1 for t in times if start <= t < start + 1.0) <= r.burst + r.rate
    assert r.status()["records_moved"]["sent"] >= 1000


def test_summaries_only_while_nothing_changes(link: Link) -> None:
    link.run(10.0)
    assert link.agree()
    from_a = [wire.decode_section(pk.decode(d, KEY).payload) for f, _, d in link.sent if f == "a"]
    assert all(not s.records and s.last for s in from_a)
    assert 9 <= len(from_a) <= 11  # one per summary_every (1 s)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "malformed"),
        (b"\x02" + bytes(30), "format"),
        (bytes([1, 1]) + bytes(28) + b"\x21", "too_many"),
    ],
)
def test_refused_sections_are_counted_not_raised(link: Link, payload: bytes, reason: str) -> None:
    msg = pk.Message(pk.MsgType.OVERRIDES, "b", pk.WireRole.BACKUP, 100, 100, 1, 1,
                     payload=payload)  # fmt: skip
    link.r["a"].received(msg, "path", 0.0)
    assert link.r["a"].status()["refused"] == {reason: 1}
    assert link.m["a"].records == {}


def test_a_bug_in_the_merge_is_counted_not_raised(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    link.m["b"].command("disable", "web", RS[0])

    def boom(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(link.m["a"], "merge_remote", boom)
    link.run(0.1)
    assert link.r["a"].status()["refused"] == {"error": 1}


def test_unknown_services_are_kept(link: Link) -> None:
    other = Override("gone", RS[0], "disable", Version(9, "b"), 1.0)
    assert other.service not in {s.name for s in CFG.services}
    link.m["b"].merge_remote([other], "x")
    link.run(3.0)
    assert link.m["a"].records[other.key] == other and link.agree()


def test_the_cli_shows_the_replication_state(link: Link) -> None:
    doc = link.m["a"].status()
    doc["replication"] = link.r["a"].status()
    assert render_overrides(doc).endswith("replication: peer ? not heard yet")
    link.run(1.5)
    doc["replication"] = link.r["a"].status()
    assert "replication: peer b agrees, last agreed" in render_overrides(doc)


@sim
async def test_two_runners_carry_overrides_but_not_while_silent(tmp_path: Path) -> None:
    """Real runners on virtual time (tests/unit/ha_sim): the overrides ride the heartbeat
    transport, and a node in a fault drill (silent) sends none."""
    async with elected(tmp_path, World()) as (a, b):
        side: dict[str, tuple[OverrideManager, Replicator]] = {}
        for n in (a, b):
            m = manager(n.r.node, tmp_path / f"ov-{n.r.node}")
            rep = Replicator(m, n.r.send_overrides, node=n.r.node, clock=n.r.clock)
            n.r.on_overrides, m.on_change = rep.received, rep.changed
            rep.start()
            side[n.r.node] = (m, rep)
        (ma, ra), (mb, rb) = side["a"], side["b"]
        try:
            ma.command("drain", "web", RS[0])
            await wait(lambda: mb.records == ma.records and rb.status()["agree"] is True)
            mb.command("weight", "web", RS[1], weight=4)
            await wait(lambda: ma.records == mb.records and ra.status()["agree"] is True)
            hb_in = a.r.status()["heartbeats"]["received"]
            assert rb.status()["packets"]["received"] > 0 and hb_in  # both kinds flowed
            drill = asyncio.create_task(a.r.drill_fault(1.0))
            await wait(lambda: a.r.fsm.silent)
            assert a.r.send_overrides(b"") == 0
            await drill
        finally:
            await ra.stop()
            await rb.stop()
