"""The overrides core: last-writer-wins merge, the drain state machine, the effect on the desired
table, the file, the conntrack count, and the manager's drain watcher on a fake kernel."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.health.state import Health
from hacontrol.model import Config, DataplaneConfig, Endpoint, RealServer, ServiceConfig
from hacontrol.overrides.conns import count_flows
from hacontrol.overrides.core import Override, Version, drain_step, merge
from hacontrol.overrides.desired import KEEP, Effect, with_overrides
from hacontrol.overrides.manager import CommandError, OverrideManager
from hacontrol.overrides.plan import reload_plan
from hacontrol.overrides.store import OverrideStore, StoreError, decode_records, encode_records

SK = ServiceKey("tcp", "192.0.2.10", 80)
RS1, RS2 = DestKey("198.51.100.1", 80), DestKey("198.51.100.2", 80)


def rec(server: str, action: Any, counter: int, node: str, **kw: Any) -> Override:
    return Override("web", server, action, Version(counter, node), 0.0, **kw)


def svc(*weights: int, sorry: bool = False, **kw: Any) -> ServiceConfig:
    return ServiceConfig(
        name="web", vip=ipaddress.ip_address("192.0.2.10"), port=80,
        real_servers=tuple(
            RealServer(ipaddress.ip_address(f"198.51.100.{i + 1}"), 80, w)
            for i, w in enumerate(weights)
        ),
        sorry_server=Endpoint(ipaddress.ip_address("203.0.113.9"), 80) if sorry else None, **kw,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("local", "remote", "winner"),
    [
        (None, (1, "b"), (1, "b")),  # new key: taken
        ((1, "a"), (2, "b"), (2, "b")),  # higher counter wins
        ((3, "a"), (2, "b"), (3, "a")),  # older remote: ignored
        ((2, "a"), (2, "b"), (2, "b")),  # same counter: the node name breaks the tie
        ((2, "b"), (2, "a"), (2, "b")),  # ... the same way on both nodes
    ],
)
def test_merge_last_writer_wins(local: Any, remote: Any, winner: Any) -> None:
    mine = {} if local is None else {("web", "x:1"): rec("x:1", "disable", *local)}
    theirs = rec("x:1", "clear", *remote)
    out, changed = merge(mine, [theirs])
    assert (out[("web", "x:1")].version.counter, out[("web", "x:1")].version.node) == winner
    assert changed == ({("web", "x:1")} if winner == remote else set())


def test_merge_converges_in_either_order() -> None:
    a = [rec("x:1", "drain", 4, "a", deadline_at=9.0), rec("y:1", "weight", 1, "a", weight=3)]
    b = [rec("x:1", "clear", 4, "b"), rec("y:1", "disable", 2, "b")]
    ab, _ = merge(merge({}, a)[0], b)
    ba, _ = merge(merge({}, b)[0], a)
    assert ab == ba
    assert [ab[k].action for k in sorted(ab)] == ["clear", "disable"]


@pytest.mark.parametrize(
    ("now", "conns", "in_kernel", "expected"),
    [
        (0.0, 3, True, None),  # connections left, deadline ahead
        (0.0, 0, True, "drained"),
        (0.0, None, True, None),  # unknown count: wait for the deadline
        (10.0, None, True, "deadline"),
        (10.0, 5, True, "deadline"),
        (0.0, 5, False, "not in kernel"),
    ],
)
def test_drain_step(now: float, conns: int | None, in_kernel: bool, expected: str | None) -> None:
    assert drain_step(10.0, now, conns, in_kernel) == expected


def _up(_s: ServiceConfig, _r: RealServer) -> Health:
    return Health.UP


@pytest.mark.parametrize(
    ("effects", "sorry", "expected"),
    [
        ({}, False, {RS1: 1, RS2: 2}),
        ({RS1: Effect(draining=True)}, False, {RS1: 0, RS2: 2}),
        ({RS1: Effect(remove=True)}, False, {RS2: 2}),
        ({RS2: Effect(weight=7)}, False, {RS1: 1, RS2: 7}),
        # all drained: the sorry server takes the new connections
        ({RS1: Effect(draining=True), RS2: Effect(remove=True)}, True,
         {RS1: 0, DestKey("203.0.113.9", 80): 1}),
    ],
)  # fmt: skip
def test_effects_on_the_desired_service(
    effects: dict[DestKey, Effect], sorry: bool, expected: dict[DestKey, int]
) -> None:
    out = with_overrides(svc(1, 2, sorry=sorry), _up, lambda _n, dk: effects.get(dk, KEEP), None)
    assert {k: d.weight for k, d in out.dests.items()} == expected


def test_weight_override_leaves_a_down_server_as_health_puts_it() -> None:
    def health(_s: ServiceConfig, rs: RealServer) -> Health:
        return Health.DOWN if rs.weight == 1 else Health.UP

    s = svc(1, 2, on_failure="weight0")
    out = with_overrides(s, health, lambda _n, _dk: Effect(weight=9), None)
    assert {k: d.weight for k, d in out.dests.items()} == {RS1: 0, RS2: 9}


def test_store_round_trip_and_refusals(tmp_path: Path) -> None:
    store = OverrideStore(tmp_path)
    assert store.load() == (0, [], [], set())
    recs = [rec("198.51.100.1:80", "drain", 3, "a", deadline_at=5.0),
            rec("198.51.100.2:80", "weight", 4, "b", weight=0)]  # fmt: skip
    store.save(4, recs, [], {("web", "198.51.100.1:80", 3, "a")})
    assert store.load() == (
        4, sorted(recs, key=lambda o: o.key), [], {("web", "198.51.100.1:80", 3, "a")}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["overrides.json"]  # no temporary left
    for bad in ([{"service": "web"}], [{**encode_records(recs)[0], "weight": 3}],
                [{**encode_records(recs)[0], "version": [0, "a"]}]):  # fmt: skip
        with pytest.raises(ValueError):
            decode_records(bad)
    (tmp_path / "overrides.json").write_text("{not json")
    with pytest.raises(StoreError, match="not a valid overrides file"):
        store.load()


def test_count_flows_matches_vip_and_reply_source() -> None:
    flows = [
        (6, "192.0.2.10", 80, "198.51.100.1", 80),
        (6, "192.0.2.10", 80, "198.51.100.1", 80),
        (6, "192.0.2.11", 80, "198.51.100.1", 80),  # another service's flow to the same server
        (17, "192.0.2.10", 80, "198.51.100.1", 80),  # another protocol
    ]
    assert count_flows(flows, [(SK, RS1), (SK, RS2)]) == {(SK, RS1): 2, (SK, RS2): 0}


class Kernel:
    """A fake kernel view and connection counts for the manager (logic only)."""

    def __init__(self) -> None:
        self.conns: dict[Any, int] | None = {(SK, RS1): 2}
        self.table = {SK: TableService(ServiceSpec(), {RS1: DestSpec(0), RS2: DestSpec(2)})}
        self.dirty: list[set[ServiceKey]] = []

    async def read(self, pairs: list[Any]) -> dict[Any, int] | None:
        return None if self.conns is None else {p: self.conns.get(p, 0) for p in pairs}


def manager(k: Kernel, now: list[float], cfg: Config) -> OverrideManager:
    return OverrideManager(
        "a", lambda: cfg, store=None, mark_dirty=lambda keys: k.dirty.append(set(keys)),
        kernel=lambda: k.table, conns=k.read, wall=lambda: now[0],
    )  # fmt: skip


async def test_drain_ends_when_the_connections_end_or_at_the_deadline() -> None:
    k, now = Kernel(), [100.0]
    cfg = Config(node_name="a", services=(svc(1, 2),))
    m = manager(k, now, cfg)
    m.command("drain", "web", "198.51.100.1:80", deadline=30)
    assert m.effect("web", RS1) == Effect(draining=True) and k.dirty == [{SK}]
    assert await m.check() == 1.0  # connections left: look again in a poll
    assert m.status()["overrides"][0]["drain"]["connections"] == 2
    k.conns = {(SK, RS1): 0}
    assert await m.check() is None  # drained: nothing left to watch
    assert m.effect("web", RS1) == Effect(remove=True)
    assert m.status()["overrides"][0]["state"] == "drained" and k.dirty[-1] == {SK}
    # a second drain with the count unknown ends at its deadline only
    m.command("drain", "web", "198.51.100.1:80", deadline=10)
    k.conns = None
    assert await m.check() == 1.0
    now[0] += 10
    assert await m.check() is None
    assert m.status()["overrides"][0]["drain"]["ended"] == "deadline"
    m.command("clear", "web", "198.51.100.1:80")
    assert m.effect("web", RS1) == KEEP and m.status()["overrides"] == []


def test_commands_refuse_what_names_nothing() -> None:
    m = manager(Kernel(), [0.0], Config(node_name="a", services=(svc(1),)))
    with pytest.raises(CommandError, match="no service"):
        m.command("drain", "nope")
    with pytest.raises(CommandError, match="no real server"):
        m.command("disable", "web", "198.51.100.7:80")
    with pytest.raises(CommandError, match="address:port"):
        m.command("disable", "web", "web1")
    with pytest.raises(CommandError, match="weight"):
        m.command("weight", "web", weight=70000)
    assert m.records == {}
    made = m.command("disable", "web")  # every real server of the service, one version
    assert {o.version for o in made} == {Version(1, "a")}


def test_reload_plan_drains_a_dropped_server_and_lists_changes() -> None:
    old = Config(node_name="a", services=(svc(1, 2),))
    new = Config(node_name="a", services=(svc(1),), dataplane=DataplaneConfig(drain_removed=60.0))
    k = Kernel()
    k.table[SK].dests[RS1] = DestSpec(1)
    plan = reload_plan(old, new, k.table, {SK}, _up, lambda _n, _d: KEEP, [], now=0.0)
    assert plan["changes"] == [
        "update_dest tcp/192.0.2.10:80 -> 198.51.100.2:80 weight=0 forwarding=nat"
    ]
    assert plan["leaving"] == ["tcp/192.0.2.10:80 -> 198.51.100.2:80"]
    cut = Config(node_name="a", services=(svc(1),), dataplane=DataplaneConfig(drain_removed=0.0))
    plan = reload_plan(old, cut, k.table, {SK}, _up, lambda _n, _d: KEEP, [], now=0.0)
    assert plan["changes"] == ["del_dest tcp/192.0.2.10:80 -> 198.51.100.2:80"]


def test_parse_proc_conntrack_keeps_live_flows() -> None:
    from hacontrol.overrides.conns import parse_proc

    lines = [
        "ipv4     2 tcp      6 431999 ESTABLISHED src=198.51.100.2 dst=192.0.2.10 sport=40000 "
        "dport=80 src=198.51.100.1 dst=198.51.100.2 sport=80 dport=40000 [ASSURED] mark=0 use=2",
        "ipv4     2 tcp      6 119 TIME_WAIT src=198.51.100.2 dst=192.0.2.10 sport=40001 "
        "dport=80 src=198.51.100.1 dst=198.51.100.2 sport=80 dport=40001 [ASSURED] mark=0 use=2",
        "ipv4     2 udp      17 29 src=198.51.100.2 dst=192.0.2.10 sport=5000 dport=53 "
        "src=198.51.100.1 dst=198.51.100.2 sport=53 dport=5000 mark=0 use=2",
        "ipv6     10 tcp      6 60 SYN_SENT src=2001:db8::2 dst=2001:0db8::a sport=1 dport=80 "
        "[UNREPLIED] src=2001:db8::1 dst=2001:db8::2 sport=80 dport=1 mark=0 use=2",
        "ipv4     2 icmp     1 29 src=198.51.100.2 dst=192.0.2.10 type=8 code=0 id=1",
    ]
    assert parse_proc(lines) == [
        (6, "192.0.2.10", 80, "198.51.100.1", 80),
        (17, "192.0.2.10", 53, "198.51.100.1", 53),
        (6, "2001:db8::a", 80, "2001:db8::1", 80),
    ]


def test_text_status_shows_the_override_beside_the_configured_values() -> None:
    from hacontrol.cli_render import _override

    drain = {"connections": 2, "deadline_in": 290.0, "ended": None}
    o = {"state": "draining", "weight": None, "version": "a#3", "drain": drain}
    assert _override(o) == "draining (2 connections, deadline in 290s)  [a#3]"
    assert _override({**o, "drain": {**drain, "ended": "deadline"}}) == "draining (deadline)  [a#3]"
    assert _override({"state": "weight", "weight": 5, "version": "b#1"}) == "weight 5  [b#1]"
