"""The connection hand-off: its pure nft rendering (table-driven) and when the runner drains.

The runner cases run tests/unit/ha_sim.py's simulated pair (virtual time, fake VIPs, in-memory
heartbeats) with a fake ``Handoff`` that records its calls on the same timeline as the VIPs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ha_sim import (
    INTERVAL,
    FakeNotifier,
    FakeVips,
    Node,
    World,
    make_pair,
    running,
    sim,
    simulate,
    wait_until,
)

from hacontrol.daemon_ha import apply_ha_live
from hacontrol.ha.handoff import Handoff, services_of
from hacontrol.ha.handoff_rules import HandoffRules
from hacontrol.ha.interfaces import HaIoError
from hacontrol.ha.runner import HaRunner
from hacontrol.metrics import Metrics
from hacontrol.model import Config, Endpoint, HAConfig, RealServer, ServiceConfig

SVC = [("198.51.100.10", "tcp", 80), ("2001:db8::10", "udp", 53)]
RS = [("192.0.2.2", "tcp", 80), ("192.0.2.3", "tcp", 8080), ("2001:db8::2", "udp", 53)]


def rules_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [i["add"]["rule"] for i in doc["nftables"] if "rule" in i.get("add", {})]


def sets_of(doc: dict[str, Any]) -> dict[tuple[str, str], list[Any]]:
    return {
        (s["family"], s["name"]): [e["concat"] for e in s.get("elem", [])]
        for i in doc["nftables"]
        if "set" in i.get("add", {})
        for s in [i["add"]["set"]]
    }


# -- pure rendering -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("svc", "via", "families", "rules_per_family"),
    [
        (SVC, None, {"ip", "ip6"}, {}),
        (SVC, {4: "192.0.2.12"}, {"ip", "ip6"}, {"ip": 5}),
        (SVC, {4: "192.0.2.12", 6: "2001:db8::12"}, {"ip", "ip6"}, {"ip": 5, "ip6": 5}),
        (SVC[:1], {4: "192.0.2.12", 6: "2001:db8::12"}, {"ip"}, {"ip": 5}),  # no v6 service
        ([], {4: "192.0.2.12"}, set(), {}),
    ],
)
def test_render(
    svc: list[tuple[str, str, int]],
    via: dict[int, str] | None,
    families: set[str],
    rules_per_family: dict[str, int],
) -> None:
    doc = HandoffRules.of("hc_handoff", svc, RS).render(via)
    tables = {i["add"]["table"]["family"] for i in doc["nftables"] if "table" in i.get("add", {})}
    assert tables == families
    # every table is replaced atomically: add + delete + add
    deletes = [i["delete"]["table"]["family"] for i in doc["nftables"] if "delete" in i]
    assert sorted(deletes) == sorted(families)
    rules = rules_of(doc)
    count: dict[str, int] = {}
    for r in rules:
        count[r["family"]] = count.get(r["family"], 0) + 1
        verdicts = [e for e in r["expr"] if "dup" in e or "drop" in e]
        peer = (via or {})[4 if r["family"] == "ip" else 6]
        assert verdicts == [{"dup": {"addr": peer}}, {"drop": None}], r
        ttl = r["expr"][0]["match"]
        assert ttl["op"] == ">" and ttl["right"] == 1, "a loop guard first"
        assert r["comment"].startswith("hc handoff")
    assert count == rules_per_family


def test_sets_hold_services_and_real_servers_by_family() -> None:
    sets = sets_of(HandoffRules.of("t", SVC, RS).render())
    assert sets[("ip", "svc")] == [["198.51.100.10", "tcp", 80]]
    assert sets[("ip", "rs")] == [["192.0.2.2", "tcp", 80], ["192.0.2.3", "tcp", 8080]]
    assert sets[("ip6", "svc")] == [["2001:db8::10", "udp", 53]]
    assert sets[("ip6", "rs")] == [["2001:db8::2", "udp", 53]]


def test_draining_rules_select_flows_without_local_state() -> None:
    doc = HandoffRules.of("t", SVC[:1], RS).render({4: "192.0.2.12"})
    text = [str(r["expr"]) for r in rules_of(doc)]
    assert sum("'invalid'" in t for t in text) == 2  # to a service, from a real server
    mid = [t for t in text if "'new'" in t and "'syn'" in t]
    assert len(mid) == 2  # TCP picked up mid-stream (no SYN), both directions
    assert sum("'udp'" in t and "'new'" in t for t in text) == 1
    assert all("@svc" in t or "@rs" in t for t in text)


def test_remove_deletes_both_families() -> None:
    doc = HandoffRules.of("t", SVC[:1], RS).remove()
    assert [i["delete"]["table"]["family"] for i in doc["nftables"] if "delete" in i] == [
        "ip",
        "ip6",
    ]


def test_services_of_config() -> None:
    ip = ipaddress.ip_address
    cfg = Config(
        node_name="a",
        services=(
            ServiceConfig(
                name="web",
                vip=ip("198.51.100.10"),
                port=80,
                real_servers=(RealServer(ip("192.0.2.2"), 8080),),
                sorry_server=Endpoint(ip("192.0.2.9"), 80),
            ),
        ),
    )
    svc, rs = services_of(cfg)
    assert svc == [("198.51.100.10", "tcp", 80)]
    assert rs == [("192.0.2.2", "tcp", 8080), ("192.0.2.9", "tcp", 80)]


# -- the runner ---------------------------------------------------------------------------------


class FakeHandoff:
    """Records open/begin/end/close on the pair's timeline; ``drain`` seconds per begin."""

    def __init__(self, world: World, node: str, drain: float = 60.0, fail_open: bool = False):
        self.world, self.node, self.drain, self.fail_open = world, node, drain, fail_open
        self.until: float | None = None
        self.reasons: list[str] = []
        self.closed = False

    def _note(self, op: str, reason: str = "") -> None:
        self.world.events.append((asyncio.get_running_loop().time(), self.node, op))
        self.reasons.append(f"{op}: {reason}")

    @property
    def draining(self) -> bool:
        return self.until is not None

    async def open(self) -> None:
        if self.fail_open:
            raise HaIoError("nft: no such table family")
        self._note("handoff_open")

    async def begin(self, now: float, reason: str) -> None:
        self.until = now + self.drain
        self._note("drain", reason)

    def due(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    async def end(self, reason: str) -> None:
        if self.until is not None:
            self.until = None
            self._note("undrain", reason)

    async def close(self) -> None:
        self.closed = True


@contextlib.asynccontextmanager
async def pair_h(
    tmp_path: Path, world: World, b_drain: float = 60.0
) -> AsyncIterator[tuple[Node, Node]]:
    """An elected pair, each node with a ``FakeHandoff``."""
    a, b = make_pair(tmp_path, world)
    a.r.handoff = FakeHandoff(world, "a")  # type: ignore[assignment]
    b.r.handoff = FakeHandoff(world, "b", drain=b_drain)  # type: ignore[assignment]
    async with running(a, b):
        await wait_until(lambda: (a.role, b.role) == ("active", "backup") and a.vips.held)
        yield a, b


def fake(n: Node) -> FakeHandoff:
    h = n.r.handoff
    assert isinstance(h, FakeHandoff)
    return h


@sim
async def test_first_election_does_not_drain(tmp_path: Path) -> None:
    world = World()
    async with pair_h(tmp_path, world) as (a, b):
        assert not fake(a).draining and not fake(b).draining
        assert world.index("a", "handoff_open") < world.index("a", "take")


@sim
async def test_planned_handover_drains_before_taking(tmp_path: Path) -> None:
    world = World()
    async with pair_h(tmp_path, world) as (a, b):
        out = await a.r.drill_handover()
        assert out["ok"] and b.role == "active"
        # b hands a's flows back to a from before it takes the VIPs, a releases after b took them
        assert world.index("b", "drain") < world.index("b", "take") < world.index("a", "release")
        assert fake(b).draining and "from a" in fake(b).reasons[-1]
        assert not fake(a).draining
        # back to a: a drains, b's drain ends once it released
        out = await b.r.drill_handover()
        assert out["ok"] and a.role == "active"
        await wait_until(lambda: not fake(b).draining)
        assert "released the VIP group" in fake(b).reasons[-1]
        assert fake(a).draining


@sim
async def test_drain_ends_when_due(tmp_path: Path) -> None:
    world = World()
    async with pair_h(tmp_path, world, b_drain=4 * INTERVAL) as (a, b):
        await a.r.drill_handover()
        took = world.events[world.index("b", "drain")][0]
        await wait_until(lambda: not fake(b).draining, within=2.0)
        ended = world.events[world.index("b", "undrain")][0]
        assert 4 * INTERVAL <= ended - took <= 4 * INTERVAL + 2 * INTERVAL  # checked each tick
        assert "drain period over" in fake(b).reasons[-1] and b.role == "active"


@sim
async def test_crash_takeover_does_not_drain(tmp_path: Path) -> None:
    world = World()
    async with pair_h(tmp_path, world) as (a, b):
        await a.r.stop(graceful=False)  # silent: nobody to hand flows to
        await wait_until(lambda: b.role == "active" and b.vips.held)
        assert "drain" not in [op for _, n, op in world.events if n == "b"]
        assert fake(a).closed


@sim
async def test_drain_ends_when_the_peer_dies(tmp_path: Path) -> None:
    async with pair_h(tmp_path, World()) as (a, b):
        await a.r.drill_handover()
        assert fake(b).draining
        await a.r.stop(graceful=False)
        await wait_until(lambda: not fake(b).draining, within=2.0)
        assert "peer dead" in fake(b).reasons[-1] and b.role == "active"


@sim
async def test_a_drain_outlives_a_peer_that_stopped_cleanly(tmp_path: Path) -> None:
    # a restart: the stopping daemon hands over and is gone, its kernel still forwards the
    # connections it NATed, so the new active keeps handing them to it for the whole period
    world = World()
    async with pair_h(tmp_path, world, b_drain=30 * INTERVAL) as (a, b):
        await a.r.stop()  # graceful: STOPPING, the VIPs handed over, then silence
        await wait_until(lambda: b.role == "active" and fake(b).draining)
        took = world.events[world.index("b", "drain")][0]
        await wait_until(lambda: not fake(b).draining, within=60 * INTERVAL)
        ended = world.events[world.index("b", "undrain")][0]
        assert ended - took >= 30 * INTERVAL, "cut when the stopped peer fell silent"
        assert "drain period over" in fake(b).reasons[-1] and b.role == "active"


@sim
async def test_open_failure_runs_without_handoff(tmp_path: Path) -> None:
    world = World()
    a, b = make_pair(tmp_path, world)
    a.r.handoff = FakeHandoff(world, "a", fail_open=True)  # type: ignore[assignment]
    async with running(a, b):
        await wait_until(lambda: (a.role, b.role) == ("active", "backup") and a.vips.held)
        assert a.r.handoff is None
        assert (await a.r.drill_handover())["ok"]


def test_reload_updates_the_services_handed_off() -> None:
    ip = ipaddress.ip_address
    ha = HAConfig(bind=Endpoint(ip("192.0.2.11"), 5405), peers=(), secret_file="-")
    web = ServiceConfig(name="web", vip=ip("198.51.100.10"), port=80,
                        real_servers=(RealServer(ip("192.0.2.2"), 80),))  # fmt: skip
    old = Config(node_name="a", services=(web,), ha=ha)
    new = dataclasses.replace(old, services=(web, dataclasses.replace(web, name="dns", port=53)))

    handoff = Handoff(HandoffRules.of("hc_handoff", *services_of(old)), ["192.0.2.12"])

    async def main() -> None:
        r = HaRunner(
            ha, "a", b"k" * 32, clock=asyncio.get_running_loop().time, metrics=Metrics(),
            vips=FakeVips(World(), "a"), notifier=FakeNotifier(), health_summary=list,
            digest="", state_dir="-", handoff=handoff,
        )  # fmt: skip
        apply_ha_live(r, old, new, [])  # through the runner's public reconfigure

    simulate(main())
    assert handoff.rules.table_name == "hc_handoff"
    assert handoff.rules.svc == {("198.51.100.10", "tcp", 80), ("198.51.100.10", "tcp", 53)}
