"""The HA runner, two real runners on one virtual-time loop (tests/unit/ha_sim.py: in-memory
heartbeat segment, fake VIPs / notifier / tracker): election, crash takeover, graceful stop and
planned handover (make before break), fault drill timeline, lease renewal, tracked faults, a
stalled loop and a frozen node, live reconfiguration, and the boot epoch / key helpers. Time is
virtual: the figures below are exact and no test waits for real."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from ha_sim import INTERVAL, FakeNotifier, World, elected, loop, make_pair, running, sim
from ha_sim import wait_until as wait

from hacontrol.ha import packet as pk
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import TrackEvent
from hacontrol.ha.peer import from_wire, peer_takeover, to_wire
from hacontrol.ha.runner import DrillError
from hacontrol.ha.track import FallCounter
from hacontrol.ha.transport import EPOCH_FILE, load_key, next_epoch
from hacontrol.ha.vip import VipGroup
from hacontrol.model import AnnounceConfig, TrackConfig, VipConfig

DEAD = 3 * INTERVAL


@sim
async def test_pair_elects_and_holds(tmp_path: Path) -> None:
    world = World()
    async with elected(tmp_path, world) as (a, b):
        await asyncio.sleep(20 * INTERVAL)
        assert (a.role, b.role) == ("active", "backup")
        assert world.holders == {"a"} and a.vips.announced > 0
        assert a.notifier.calls[-1][0] == "active" and b.notifier.calls[-1][0] == "backup"
        st = a.r.status()
        json.dumps(st)  # served as is by the API
        assert st["role"] == "active" and st["vips_held"] and st["peer"]["name"] == "b"
        assert st["peer"]["role"] == "backup" and st["peer"]["config_match"]
        assert st["peer"]["last_heard_ago"] <= INTERVAL
        assert list(st["peer"]["paths"]) == [str(b.r.cfg.bind)]
        assert st["transitions"][-1]["to"] == "active" and st["transitions"][-1]["reason"]
        assert set(st["last_takeover"]) == {"detected", "vip_added", "announced", "hb_active"}
        assert st["heartbeats"]["received"]
        # only a start's first packets, sent before the peer heard this boot, are unconfirmed
        assert set(st["heartbeats"]["rejected"]) <= {"unconfirmed"}
        assert st["heartbeats"]["rejected"].get("unconfirmed", 0) <= 2
        m = a.r.metrics.registry.get_sample_value
        assert m("hacontrol_ha_role", {"role": "active"}) == 1
        moved = {"from_role": "starting", "to_role": "active"}
        assert m("hacontrol_ha_transitions_total", moved) == 1


@sim
async def test_transition_is_logged_with_stable_keys(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path, World())
    with structlog.testing.capture_logs() as logs:
        async with running(a, b):
            await wait(lambda: (a.role, b.role) == ("active", "backup"))
    moves = [e for e in logs if e["event"] == "ha.transition"]
    assert {(e["node"], e["from_role"], e["to_role"]) for e in moves} == {
        ("a", "starting", "active"), ("b", "starting", "backup")}  # fmt: skip
    assert all(e["reason"] and e["log_level"] == "info" for e in moves)


@sim
async def test_lease_is_renewed_while_active(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        before = a.vips.renews
        took = await wait(lambda: a.vips.renews >= before + 3)
        assert took <= 3 * (0.6 / 3 + INTERVAL)  # every lease / 3, checked each tick
        assert b.vips.renews == 0


@sim
async def test_crash_of_active_backup_takes_over(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        await a.r.stop(graceful=False)  # silent, VIPs left to the lease
        took = await wait(lambda: b.role == "active" and b.vips.held)
        assert DEAD - INTERVAL <= took <= DEAD + INTERVAL  # the last heartbeat: < 1 tick before
        assert "silent" in b.r.status()["reason"]


@sim
async def test_graceful_stop_hands_over_make_before_break(tmp_path: Path) -> None:
    world = World()
    async with elected(tmp_path, world) as (a, b):
        n = len(world.events)
        t0 = loop().time()
        await a.r.stop(graceful=True)
        took = loop().time() - t0
        assert b.role == "active" and not a.vips.held
        assert world.index("b", "take", n) < world.index("a", "release", n)
        assert took < DEAD  # faster than failure detection would have been
        assert "handed over" in b.r.status()["reason"]


@sim
async def test_a_backup_stopping_cleanly_says_so_last(tmp_path: Path) -> None:
    """A backup's clean stop hands nothing over, yet its kernel may still forward flows the
    active hands to it (a drain after a move): its last word must be ``stopping``, or the active
    takes it for a dead host and ends that drain (the soak's backup restarts broke them)."""
    async with elected(tmp_path, World()) as (a, b):
        await b.r.stop(graceful=True)
        last = await wait(lambda: a.r.peer.last is not None
                          and from_wire(a.r.peer.last.role) is Role.STOPPING)  # fmt: skip
        assert last <= INTERVAL
        assert a.role == "active"
        await asyncio.sleep(2 * DEAD)  # then silence, and the active stays as it is
        assert a.role == "active" and from_wire(a.r.peer.last.role) is Role.STOPPING


@sim
async def test_a_crashed_backup_says_nothing(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        await b.r.stop(graceful=False)
        await asyncio.sleep(2 * DEAD)
        assert a.r.peer.last is not None and from_wire(a.r.peer.last.role) is Role.BACKUP


@sim
async def test_drill_handover_timeline(tmp_path: Path) -> None:
    world = World()
    async with elected(tmp_path, world) as (a, b):
        n = len(world.events)
        tl = await a.r.drill_handover()
        assert tl["ok"] and tl["drill"] == "handover"
        assert (a.role, b.role) == ("backup", "active")
        assert world.index("b", "take", n) < world.index("a", "release", n)
        assert tl["gap"] == 0.0 and tl["overlap"] >= 0
        ms = 0.002  # the peer reports its steps in whole milliseconds
        assert 0 <= tl["vip_added"] <= tl["announcements_sent"] + ms
        assert tl["announcements_sent"] <= tl["first_heartbeat_as_active"] + ms
        assert tl["first_heartbeat_as_active"] <= tl["released_here"]
        assert tl["announce_count"] > 0
        with pytest.raises(DrillError, match="not active"):
            await a.r.drill_handover()


@sim
async def test_drill_handover_refused_without_peer(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        await b.r.stop(graceful=False)
        await wait(lambda: not a.r.fsm.peer_alive(loop().time()))
        with pytest.raises(DrillError, match="no live backup"):
            await a.r.drill_handover()
        assert a.role == "active" and a.vips.held


@sim
async def test_drill_fault_timeline(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        tl = await a.r.drill_fault(0.6)
        assert tl["ok"] and tl["drill"] == "fault"
        assert DEAD - INTERVAL <= tl["detection"] <= DEAD + INTERVAL
        ms = 0.002
        assert tl["detection"] <= tl["vip_added"] + ms
        assert tl["vip_added"] <= tl["announcements_sent"] + ms
        assert tl["announcements_sent"] <= tl["first_heartbeat_as_active"] + ms
        assert tl["gap"] == tl["announcements_sent"]
        assert b.role == "active"
        await wait(lambda: a.role == "backup")  # the drill is over: back, as backup
        assert not a.vips.held
        with pytest.raises(DrillError, match="not active"):
            await a.r.drill_fault(0.5)
        with pytest.raises(DrillError, match="dead interval"):
            await b.r.drill_fault(0.1)


@sim
async def test_blocking_fault_hands_over_and_recovers(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        assert a.tracker.emit is not None
        a.tracker.emit(TrackEvent("gateway:192.0.2.1", True, True, "gateway 192.0.2.1 lost"))
        await wait(lambda: (a.role, b.role) == ("fault", "active"))
        st = a.r.status()
        assert st["blocked"] and st["faults"][0]["reason"] == "gateway 192.0.2.1 lost"
        a.tracker.emit(TrackEvent("gateway:192.0.2.1", False, True, "gateway 192.0.2.1 answers"))
        await wait(lambda: a.role == "backup")
        await asyncio.sleep(20 * INTERVAL)
        assert b.role == "active"  # preempt_delay is 30 s: no flip back yet


@sim
async def test_odd_health_summaries_do_not_stop_heartbeats(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        a.health[:] = [("é" * 40, 1, 1)] + [(f"svc{i}", 1, 1) for i in range(40)]  # 80 bytes, 41
        tr = a.r.transport
        assert tr is not None
        n = sum(tr.sent.values())
        await wait(lambda: sum(tr.sent.values()) > n + 3)
        assert b.r.fsm.peer is not None and b.r.fsm.peer.healthy == 16  # the first 16, sorted


@sim
async def test_no_healthy_servers_hands_over(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        a.health[0] = ("web", 0, 2)
        await wait(lambda: (a.role, b.role) == ("backup", "active"))
        assert a.r.status()["effective_priority"] == 100


@sim
async def test_take_failure_is_retried(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path, World())
    a.vips.fail_takes = 2
    async with running(a, b):
        await wait(lambda: a.role == "active" and a.vips.held)
        assert b.role == "backup"
        await wait(lambda: a.vips.announced > 0)  # announced once the take worked


@sim
async def test_start_adopts_or_releases_present_vips(tmp_path: Path) -> None:
    world = World()
    a, b = make_pair(tmp_path, world)
    a.vips.held = b.vips.held = True  # both find the VIPs configured (e.g. after a crash)
    world.holders = {"a", "b"}
    async with running(a, b):
        await wait(lambda: (a.role, b.role) == ("active", "backup"))
        await wait(lambda: world.holders == {"a"})
        assert ("b", "release") in [(n, o) for _, n, o in world.events]


@sim
async def test_stalled_loop_does_not_fail_over(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        with structlog.testing.capture_logs() as logs:
            loop().advance(10 * INTERVAL)  # the whole loop (both nodes) froze that long
            await asyncio.sleep(10 * INTERVAL)
        assert (a.role, b.role) == ("active", "backup")
        assert {e["node"] for e in logs if e["event"] == "ha.stall"} == {"a", "b"}
        assert not [e for e in logs if e["event"] == "ha.transition"]


@sim
async def test_frozen_backup_does_not_seize(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        with structlog.testing.capture_logs() as logs:
            loop().freeze("b", 10 * DEAD)  # b alone, like SIGSTOP; a's heartbeats queue up
            await asyncio.sleep(10 * DEAD + 10 * INTERVAL)
        assert (a.role, b.role) == ("active", "backup")
        assert not b.vips.held and not [t for t in b.r.fsm.history if t.to_role is Role.ACTIVE]
        assert [e["node"] for e in logs if e["event"] == "ha.stall"] == ["b"]


@sim
async def test_frozen_active_yields_to_the_peer_that_took_over(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        loop().freeze("a", 10 * DEAD)  # b takes over meanwhile
        took = await wait(lambda: b.role == "active" and b.vips.held)
        assert a.role == "active" and took <= DEAD + INTERVAL  # a cannot know yet
        await wait(lambda: a.role == "backup")
        assert "while this node was stalled" in a.r.fsm.history[-1].reason
        await asyncio.sleep(20 * INTERVAL)
        assert (a.role, b.role) == ("backup", "active")  # no flap back before preempt_delay
        assert len([t for t in b.r.fsm.history if t.to_role is Role.ACTIVE]) == 1


@sim
async def test_wrong_key_peer_is_rejected(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path, World())
    b.r.key = b"another key entirely, 32 bytes.."
    async with running(a, b):
        await wait(lambda: a.r.status()["heartbeats"]["rejected"].get("bad_mac", 0) >= 3)
        assert a.r.fsm.peer is None and b.r.fsm.peer is None


@sim
async def test_reconfigure_swaps_notifier_and_digest(tmp_path: Path) -> None:
    async with elected(tmp_path, World()) as (a, b):
        fresh = FakeNotifier()
        with structlog.testing.capture_logs() as logs:
            a.r.reconfigure(notifier=fresh, digest="cd" * 32)
            await wait(lambda: b.r.status()["peer"]["config_match"] is False)
        assert sorted(e["node"] for e in logs if e["event"] == "ha.config_mismatch") == ["a", "b"]
        await a.r.drill_handover()
        assert fresh.calls == [("backup", a.r.fsm.reason)] and a.notifier.calls[-1][0] == "active"
        a.r.reconfigure(digest="ab" * 32)
        await wait(lambda: b.r.status()["peer"]["config_match"] is True)


# -- a tracked gateway, the start-up order, log noise -------------------------------------------

GATEWAY = TrackConfig(gateway=ipaddress.ip_address("192.0.2.1"), gateway_interval=0.2)


@sim
async def test_cut_off_backup_confirms_its_gateway_before_taking(tmp_path: Path) -> None:
    async with elected(tmp_path, World(), track=GATEWAY) as (a, b):
        assert b.tracker.probes == 0  # nothing to confirm while the peer is heard
        b.tracker.gateway_ok = False  # b is cut off: the peer and its gateway gone at once
        with structlog.testing.capture_logs() as logs:
            await a.r.stop(graceful=False)
            await wait(lambda: b.tracker.probes >= 3)  # re-probed while the peer is silent
        assert b.role == "backup" and not b.vips.held
        held = [e for e in logs if e["event"] == "ha.takeover_held"]
        assert len(held) == 1 and "did not answer" in held[0]["reason"]
        b.tracker.gateway_ok = True  # the gateway answers: b takes over on that answer
        await wait(lambda: b.role == "active" and b.vips.held)
        assert "gateway answered" in b.r.status()["reason"]


class GatedHandoff:
    """A hand-off whose ``open()`` takes as long as the test says (nftables takes ~100 ms)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.opening = asyncio.Event()
        self.draining = False

    async def open(self) -> None:
        self.opening.set()
        await self.gate.wait()

    def due(self, now: float) -> bool:
        return False

    async def begin(self, now: float, reason: str) -> None:
        pass

    async def end(self, reason: str) -> None:
        pass

    async def close(self) -> None:
        pass


@sim
async def test_heartbeats_during_a_slow_start_meet_one_machine(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path, World())
    handoff = GatedHandoff()
    b.r.handoff = handoff  # type: ignore[assignment]
    await a.start()
    try:
        await wait(lambda: a.role == "active" and a.vips.held)
        starting = asyncio.create_task(b.start())
        await handoff.opening.wait()
        tr = a.r.transport
        assert tr is not None
        sent = sum(tr.sent.values())
        await wait(lambda: sum(tr.sent.values()) >= sent + 3)
        handoff.gate.set()  # heartbeats arrived while the hand-off was opening
        await starting
        await wait(lambda: b.role == "backup")
        await asyncio.sleep(10 * INTERVAL)
        assert [t.to_role for t in b.r.fsm.history] == [Role.BACKUP]
        assert [role for role, _ in b.notifier.calls] == ["backup"]
        m = b.r.metrics.registry.get_sample_value
        assert m("hacontrol_ha_transitions_total",
                 {"from_role": "starting", "to_role": "backup"}) == 1  # fmt: skip
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


@sim
async def test_tracked_fact_logged_once(tmp_path: Path) -> None:
    a, b = make_pair(tmp_path, World(), track=GATEWAY)
    gw = FallCounter("gateway:192.0.2.1", "gateway 192.0.2.1", 1)
    async with running(a, b):
        await wait(lambda: a.tracker.emit is not None)
        assert a.tracker.emit is not None
        with structlog.testing.capture_logs() as logs:
            ev = gw.observe(False)  # the tracker's rule makes the event...
            assert ev is not None
            a.tracker.emit(ev)  # ...and emits it; the runner logs it
        track = [e for e in logs if e["event"].startswith("ha.track")]
        assert len(track) == 1 and track[0]["reason"] == ev.reason, track
        assert a.r.fsm.blocked


def test_roles_map_one_to_one_onto_the_wire() -> None:
    assert {to_wire(r) for r in Role} == set(pk.WireRole)
    for r in Role:
        assert from_wire(to_wire(r)) is r and to_wire(r).name == r.name


# -- helpers ----------------------------------------------------------------------------------


def test_next_epoch_grows_and_persists(tmp_path: Path) -> None:
    e1 = next_epoch(tmp_path, wall_ms=1000)
    e2 = next_epoch(tmp_path, wall_ms=1000)  # wall clock went nowhere (or back)
    e3 = next_epoch(tmp_path, wall_ms=5000)
    assert (e1, e2, e3) == (1000, 1001, 5000)
    assert (tmp_path / EPOCH_FILE).read_text().strip() == "5000"


def test_next_epoch_survives_unwritable_dir(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert next_epoch(f / "sub", wall_ms=42) == 42  # cannot store: wall clock used


@pytest.fixture
def keyfile(tmp_path: Path) -> Iterator[Path]:
    p = tmp_path / "ha.key"
    yield p


def test_load_key(keyfile: Path) -> None:
    keyfile.write_bytes(b"  0123456789abcdef0123\n")
    os.chmod(keyfile, 0o600)
    assert load_key(str(keyfile)) == b"0123456789abcdef0123"
    keyfile.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_key(str(keyfile))
    with pytest.raises(ValueError, match="No such file"):
        load_key(str(keyfile) + ".missing")




def test_releasing_nothing_logs_nothing() -> None:
    # sync, on the stock loop: pyroute2's IPRoute (on VipGroup's worker thread) refuses uvloop
    vip = VipConfig(ipaddress.ip_interface("192.0.2.100/24"), "nosuchif0")

    async def release() -> list[Any]:
        group = VipGroup([vip], AnnounceConfig())
        try:
            with structlog.testing.capture_logs() as logs:
                await group.release()  # no such interface: nothing held, nothing removed
            return logs
        finally:
            await group.close()

    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        logs = runner.run(release())
    assert not [e for e in logs if e["event"] == "ha.vip.release"], logs


def takeover(detected: int, added: int, announced: int) -> pk.Message:
    return pk.Message(
        type=pk.MsgType.HEARTBEAT, node="b", role=pk.WireRole.ACTIVE, priority=100,
        effective_priority=100, epoch=1, seq=1, digest=bytes(32), flags=0, health=(),
        takeover=pk.Takeover(detected, added, announced, 3),
    )  # fmt: skip


def test_drill_timeline_steps_never_after_the_first_heartbeat() -> None:
    # truth (peer clock = ours, t0 = 0): detected 0.3000, VIP added 0.3046, announced 0.3048,
    # first heartbeat as active sent 0.3049 and heard at 0.3050; the last one, 0.2 s later,
    # says 200 ms ago (200.4 truncated) for both steps: read from it alone they land at 0.3054
    first = takeover(detected=5, added=0, announced=0)
    last = takeover(detected=205, added=200, announced=200)
    tl = peer_takeover(last, at=0.3050, recv=0.5054, t0=0.0, first=first)
    assert tl["vip_added"] is not None and tl["announcements_sent"] is not None
    assert tl["detection"] <= tl["vip_added"] <= tl["announcements_sent"]  # type: ignore[operator]
    assert tl["announcements_sent"] <= tl["first_heartbeat_as_active"]  # type: ignore[operator]
    assert tl["announce_count"] == 3
