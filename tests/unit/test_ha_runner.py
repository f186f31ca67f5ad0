"""The HA runner with fake VIPs / notifier / tracker and real UDP heartbeats on loopback: election,
crash takeover, graceful stop and planned handover (make before break), fault drill timeline,
lease renewal, tracked faults, a stalled event loop, and the boot epoch / key helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvloop

from hacontrol.clock import monotonic
from hacontrol.ha import packet as pk
from hacontrol.ha.drills import peer_takeover
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import HaIoError, TrackEvent
from hacontrol.ha.runner import DrillError, HaRunner
from hacontrol.ha.track import LocalTracker
from hacontrol.ha.transport import EPOCH_FILE, load_key, next_epoch
from hacontrol.ha.vip import VipGroup
from hacontrol.metrics import Metrics
from hacontrol.model import AnnounceConfig, Endpoint, HAConfig, TrackConfig, VipConfig

# Both loops: the daemon runs on uvloop when available, stock asyncio otherwise (the same
# module-local override as tests/unit/test_health_probes.py).
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy"')

KEY = b"runner test key, 32 bytes long.."


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


INTERVAL = 0.05


class World:
    """What both fake VIP managers did, in order, on one clock."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.holders: set[str] = set()

    def index(self, node: str, op: str, after: int = 0) -> int:
        return next(
            i for i, (_, n, o) in enumerate(self.events) if i >= after and (n, o) == (node, op)
        )


class FakeVips:
    def __init__(self, world: World, node: str, present: bool = False) -> None:
        self.world, self.node = world, node
        self.held = present
        self.renews = 0
        self.fail_takes = 0
        self.announced = 0

    def _note(self, op: str) -> None:
        self.world.events.append((monotonic(), self.node, op))

    async def take(self, lease: float | None) -> None:
        await asyncio.sleep(0.002)  # a netlink round trip
        if self.fail_takes:
            self.fail_takes -= 1
            raise HaIoError("interface eth0 not found")
        self.held = True
        self.world.holders.add(self.node)
        self._note("take")

    async def renew(self, lease: float | None) -> None:
        self.renews += 1

    async def release(self) -> None:
        await asyncio.sleep(0.002)
        self.held = False
        self.world.holders.discard(self.node)
        self._note("release")

    async def present(self) -> bool:
        return self.held

    async def announce(self) -> int:
        self._note("announce")
        await asyncio.sleep(0.01)
        self.announced += 3
        return 3

    def describe(self) -> list[dict[str, object]]:
        return [
            {
                "address": "192.0.2.100/24",
                "interface": "eth0",
                "present": self.held,
                "lease_left": None,
            }
        ]


class FakeNotifier:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def notify(self, role: str, reason: str) -> None:
        self.calls.append((role, reason))


class FakeTracker:
    def __init__(self) -> None:
        self.emit: Callable[[TrackEvent], None] | None = None
        self.gateway_ok = True
        self.probes = 0

    async def run(self, emit: Callable[[TrackEvent], None]) -> None:
        self.emit = emit
        await asyncio.Event().wait()

    async def probe_gateway(self) -> bool:
        self.probes += 1
        await asyncio.sleep(0.001)  # an echo round trip
        return self.gateway_ok


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def ep(s: socket.socket) -> Endpoint:
    host, port = s.getsockname()
    return Endpoint(ipaddress.ip_address(host), port)


class Node:
    def __init__(
        self,
        name: str,
        runner: HaRunner,
        vips: FakeVips,
        notifier: FakeNotifier,
        tracker: FakeTracker,
        health: list[tuple[str, int, int]],
    ) -> None:
        self.name, self.r, self.vips, self.notifier = name, runner, vips, notifier
        self.tracker, self.health = tracker, health

    @property
    def role(self) -> str:
        return self.r.role


async def wait_until(cond: Callable[[], bool], within: float = 5.0) -> float:
    """Poll ``cond`` until true; returns the time it took. Fails after ``within`` seconds."""
    t0 = monotonic()
    while not cond():
        if monotonic() - t0 > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return monotonic() - t0


def summary_of(health: list[tuple[str, int, int]]) -> Callable[[], list[tuple[str, int, int]]]:
    return lambda: list(health)


def make_pair(tmp_path: Path, world: World, **over: object) -> tuple[Node, Node]:
    sa, sb = udp(), udp()
    base = HAConfig(
        bind=ep(sa),
        peers=(ep(sb),),
        secret_file="-",
        priority=150,
        preempt=True,
        preempt_delay=30.0,
        interval=INTERVAL,
        dead_after=3,
        lease=0.6,
    )
    cfgs = {
        "a": dataclasses.replace(base, **over),  # type: ignore[arg-type]
        "b": dataclasses.replace(base, bind=ep(sb), peers=(ep(sa),), priority=100, **over),  # type: ignore[arg-type]
    }
    nodes = []
    for name, sock in (("a", sa), ("b", sb)):
        vips, notifier, tracker = FakeVips(world, name), FakeNotifier(), FakeTracker()
        health = [("web", 2, 2)]
        r = HaRunner(
            cfgs[name],
            name,
            KEY,
            clock=monotonic,
            metrics=Metrics(),
            vips=vips,
            notifier=notifier,
            health_summary=summary_of(health),
            digest="ab" * 32,
            state_dir=str(tmp_path / name),
            tracker=tracker,
            sock=sock,
        )
        nodes.append(Node(name, r, vips, notifier, tracker, health))
    return nodes[0], nodes[1]


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def pair(tmp_path: Path, world: World) -> AsyncIterator[tuple[Node, Node]]:
    a, b = make_pair(tmp_path, world)
    await a.r.start()
    await b.r.start()
    try:
        await wait_until(lambda: (a.role, b.role) == ("active", "backup"))
        await wait_until(lambda: a.vips.held)
        yield a, b
    finally:
        for n in (a, b):
            await n.r.stop(graceful=False)


async def test_pair_elects_and_holds(pair: tuple[Node, Node], world: World) -> None:
    a, b = pair
    await asyncio.sleep(20 * INTERVAL)
    assert (a.role, b.role) == ("active", "backup")
    assert world.holders == {"a"} and a.vips.announced > 0
    assert a.notifier.calls[-1][0] == "active" and b.notifier.calls[-1][0] == "backup"
    st = a.r.status()
    json.dumps(st)  # served as is by the API
    assert st["role"] == "active" and st["vips_held"] and st["peer"]["name"] == "b"
    assert st["peer"]["role"] == "backup" and st["peer"]["config_match"]
    assert st["peer"]["last_heard_ago"] < 4 * INTERVAL
    assert list(st["peer"]["paths"]) == [str(b.r.cfg.bind)]
    assert st["transitions"][-1]["to"] == "active" and st["transitions"][-1]["reason"]
    assert st["heartbeats"]["received"] and not st["heartbeats"]["rejected"]
    m = a.r.metrics.registry.get_sample_value
    assert m("hacontrol_ha_role", {"role": "active"}) == 1
    assert m("hacontrol_ha_transitions_total", {"from_role": "starting", "to_role": "active"}) == 1


async def test_lease_is_renewed_while_active(pair: tuple[Node, Node]) -> None:
    a, b = pair
    before = a.vips.renews
    await wait_until(lambda: a.vips.renews >= before + 3, within=2.0)
    assert b.vips.renews == 0


async def test_crash_of_active_backup_takes_over(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.r.stop(graceful=False)  # silent, VIPs left to the lease
    took = await wait_until(lambda: b.role == "active" and b.vips.held)
    dead = INTERVAL * 3
    assert dead * 0.9 <= took <= dead + 6 * INTERVAL
    assert "silent" in b.r.status()["reason"]


async def test_graceful_stop_hands_over_make_before_break(
    pair: tuple[Node, Node], world: World
) -> None:
    a, b = pair
    n = len(world.events)
    t0 = monotonic()
    await a.r.stop(graceful=True)
    took = monotonic() - t0
    assert b.role == "active" and not a.vips.held
    assert world.index("b", "take", n) < world.index("a", "release", n)
    assert took < INTERVAL * 3 + 0.5  # faster than failure detection would have been
    assert "handed over" in b.r.status()["reason"]


async def test_drill_handover_timeline(pair: tuple[Node, Node], world: World) -> None:
    a, b = pair
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
    assert tl["announce_count"] >= 0 and tl["announcements_sent"] is not None
    with pytest.raises(DrillError, match="not active"):
        await a.r.drill_handover()


async def test_drill_handover_refused_without_peer(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await b.r.stop(graceful=False)
    await wait_until(lambda: not a.r.fsm.peer_alive(monotonic()))
    with pytest.raises(DrillError, match="no live backup"):
        await a.r.drill_handover()
    assert a.role == "active" and a.vips.held


async def test_drill_fault_timeline(pair: tuple[Node, Node]) -> None:
    a, b = pair
    tl = await a.r.drill_fault(0.6)
    assert tl["ok"] and tl["drill"] == "fault"
    dead = 3 * INTERVAL
    assert dead * 0.9 <= tl["detection"] <= dead + 6 * INTERVAL
    ms = 0.002
    assert tl["detection"] <= tl["vip_added"] + ms
    assert tl["vip_added"] <= tl["announcements_sent"] + ms
    assert tl["announcements_sent"] <= tl["first_heartbeat_as_active"] + ms
    assert tl["gap"] == tl["announcements_sent"]
    assert b.role == "active"
    await wait_until(lambda: a.role == "backup")  # the drill is over: back, as backup
    assert not a.vips.held
    with pytest.raises(DrillError, match="not active"):
        await a.r.drill_fault(0.5)
    with pytest.raises(DrillError, match="dead interval"):
        await b.r.drill_fault(0.1)


async def test_blocking_fault_hands_over_and_recovers(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert a.tracker.emit is not None
    a.tracker.emit(TrackEvent("gateway:192.0.2.1", True, True, "gateway 192.0.2.1 lost"))
    await wait_until(lambda: (a.role, b.role) == ("fault", "active"))
    st = a.r.status()
    assert st["blocked"] and st["faults"][0]["reason"] == "gateway 192.0.2.1 lost"
    a.tracker.emit(TrackEvent("gateway:192.0.2.1", False, True, "gateway 192.0.2.1 answers"))
    await wait_until(lambda: a.role == "backup")
    assert b.role == "active"  # preempt_delay is 30 s: no flip back yet


async def test_odd_health_summaries_do_not_stop_heartbeats(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.health[:] = [("é" * 40, 1, 1)] + [(f"svc{i}", 1, 1) for i in range(40)]  # 80 bytes, 41
    before = a.r.transport.sent if a.r.transport else {}
    n = sum(before.values())
    await wait_until(lambda: a.r.transport is not None and sum(a.r.transport.sent.values()) > n + 3)
    assert b.r.fsm.peer is not None and b.r.fsm.peer.healthy == 16  # the first 16, sorted
    a.health[:] = [("web", 2, 2)]


async def test_no_healthy_servers_hands_over(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.health[0] = ("web", 0, 2)
    await wait_until(lambda: (a.role, b.role) == ("backup", "active"))
    assert a.r.status()["effective_priority"] == 100


async def test_take_failure_is_retried(tmp_path: Path, world: World) -> None:
    a, b = make_pair(tmp_path, world)
    a.vips.fail_takes = 2
    await a.r.start()
    await b.r.start()
    try:
        await wait_until(lambda: a.role == "active" and a.vips.held)
        assert b.role == "backup"
        await wait_until(lambda: a.vips.announced > 0)  # announced once the take worked
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


async def test_start_adopts_or_releases_present_vips(tmp_path: Path, world: World) -> None:
    a, b = make_pair(tmp_path, world)
    a.vips.held = b.vips.held = True  # both find the VIPs configured (e.g. after a crash)
    world.holders = {"a", "b"}
    await a.r.start()
    await b.r.start()
    try:
        await wait_until(lambda: (a.role, b.role) == ("active", "backup"))
        await wait_until(lambda: world.holders == {"a"})
        assert ("b", "release") in [(n, o) for _, n, o in world.events]
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


async def test_stalled_loop_does_not_fail_over(pair: tuple[Node, Node]) -> None:
    a, b = pair
    with structlog.testing.capture_logs() as logs:
        time.sleep(10 * INTERVAL)  # noqa: ASYNC251 - freezing the loop (both nodes) is the test
        await asyncio.sleep(10 * INTERVAL)
    assert (a.role, b.role) == ("active", "backup")
    assert any(e["event"] == "ha.stall" for e in logs)
    assert not [e for e in logs if e["event"] == "ha.transition"]


async def test_wrong_key_peer_is_rejected(tmp_path: Path, world: World) -> None:
    a, b = make_pair(tmp_path, world)
    b.r.key = b"another key entirely, 32 bytes.."
    await a.r.start()
    await b.r.start()
    try:
        await wait_until(lambda: a.r.status()["heartbeats"]["rejected"].get("bad_mac", 0) >= 3)
        assert a.r.fsm.peer is None and b.r.fsm.peer is None
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


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


# -- one node per thread: stall one event loop while the other keeps running ------------------


SLOW = 0.1


class LoopThread:
    """An event loop in its own thread (a second "process" whose loop can be frozen alone)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, within: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(within)

    def freeze(self, seconds: float) -> None:
        """Like SIGSTOP + SIGCONT: the loop does nothing for ``seconds``."""
        self.loop.call_soon_threadsafe(time.sleep, seconds)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
async def threaded(tmp_path: Path, world: World) -> AsyncIterator[tuple[Node, Node, LoopThread]]:
    a, b = make_pair(tmp_path, world, interval=SLOW)  # two threads share the GIL: more slack
    th = LoopThread()

    await a.r.start()
    th.run(b.r.start())
    try:
        await wait_until(lambda: (a.role, b.role) == ("active", "backup") and a.vips.held)
        yield a, b, th
    finally:
        await a.r.stop(graceful=False)
        th.run(b.r.stop(graceful=False))
        th.close()


async def test_frozen_backup_does_not_seize(threaded: tuple[Node, Node, LoopThread]) -> None:
    a, b, th = threaded
    th.freeze(1.5)  # 5 dead intervals
    await asyncio.sleep(1.5 + 10 * SLOW)
    assert (a.role, b.role) == ("active", "backup")
    assert not b.vips.held and not [t for t in b.r.fsm.history if t.to_role is Role.ACTIVE]


async def test_frozen_active_yields_to_the_peer_that_took_over(
    threaded: tuple[Node, Node, LoopThread],
) -> None:
    a, b, _ = threaded
    asyncio.get_running_loop().call_soon(time.sleep, 1.5)
    await asyncio.sleep(0)  # a's loop (this one) is frozen now; b takes over meanwhile
    await wait_until(lambda: a.role == "backup")
    assert b.role == "active" and b.vips.held
    assert "while this node was stalled" in a.r.fsm.history[-1].reason
    await asyncio.sleep(20 * SLOW)
    assert (a.role, b.role) == ("backup", "active")  # no flap back before preempt_delay (30 s)
    assert len([t for t in b.r.fsm.history if t.to_role is Role.ACTIVE]) == 1


# -- a tracked gateway, the start-up order, log noise, drill timelines ------------------------

GATEWAY = TrackConfig(gateway=ipaddress.ip_address("192.0.2.1"), gateway_interval=0.2)


async def test_cut_off_backup_confirms_its_gateway_before_taking(
    tmp_path: Path, world: World
) -> None:
    a, b = make_pair(tmp_path, world, track=GATEWAY)
    await a.r.start()
    await b.r.start()
    try:
        await wait_until(lambda: (a.role, b.role) == ("active", "backup") and a.vips.held)
        assert b.tracker.probes == 0  # nothing to confirm while the peer is heard
        b.tracker.gateway_ok = False  # b is cut off: the peer and its gateway gone at once
        with structlog.testing.capture_logs() as logs:
            await a.r.stop(graceful=False)
            await wait_until(lambda: b.tracker.probes >= 3)  # re-probed while the peer is silent
        assert b.role == "backup" and not b.vips.held
        held = [e for e in logs if e["event"] == "ha.takeover_held"]
        assert len(held) == 1 and "did not answer" in held[0]["reason"]
        b.tracker.gateway_ok = True  # the gateway answers: b takes over on that answer
        await wait_until(lambda: b.role == "active" and b.vips.held)
        assert "gateway answered" in b.r.status()["reason"]
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


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


async def test_heartbeats_during_a_slow_start_meet_one_machine(
    tmp_path: Path, world: World
) -> None:
    a, b = make_pair(tmp_path, world)
    handoff = GatedHandoff()
    b.r.handoff = handoff  # type: ignore[assignment]
    await a.r.start()
    try:
        await wait_until(lambda: a.role == "active" and a.vips.held)
        starting = asyncio.create_task(b.r.start())
        await handoff.opening.wait()
        assert a.r.transport is not None
        sent = sum(a.r.transport.sent.values())
        await wait_until(lambda: sum(a.r.transport.sent.values()) >= sent + 3)  # type: ignore[union-attr]
        handoff.gate.set()  # heartbeats arrived while the hand-off was opening
        await starting
        await wait_until(lambda: b.role == "backup")
        await asyncio.sleep(10 * INTERVAL)
        assert [t.to_role for t in b.r.fsm.history] == [Role.BACKUP]
        assert [role for role, _ in b.notifier.calls] == ["backup"]
        m = b.r.metrics.registry.get_sample_value
        assert m("hacontrol_ha_transitions_total",
                 {"from_role": "starting", "to_role": "backup"}) == 1  # fmt: skip
    finally:
        await a.r.stop(graceful=False)
        await b.r.stop(graceful=False)


async def test_tracked_fact_logged_once(tmp_path: Path, world: World) -> None:
    a, _ = make_pair(tmp_path, world)
    tracker = LocalTracker(GATEWAY)
    ev = TrackEvent("gateway:192.0.2.1", True, True, "gateway 192.0.2.1 unreachable")
    with structlog.testing.capture_logs() as logs:
        tracker._emit(a.r._on_track, ev)  # the tracker emits, the runner logs
    track = [e for e in logs if e["event"].startswith("ha.track")]
    assert len(track) == 1 and track[0]["reason"] == ev.reason, track
    assert a.r.fsm.blocked


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
