"""The incremental reconciler on the in-memory plane: events -> actions with no kernel read
between events, a resync that repairs drift, an error that forces the next pass to be full; and
the property that slices and dirty passes give what the whole diff gives."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.clock import run_virtual
from hacontrol.dataplane import slices
from hacontrol.dataplane.desired import ConfigDesired, service_key
from hacontrol.dataplane.diff import diff
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.health.state import Health
from hacontrol.metrics import Metrics
from hacontrol.model import RealServer, ServiceConfig


def services(n: int, per: int = 3) -> list[ServiceConfig]:
    out = []
    for i in range(n):
        rs = tuple(
            RealServer(ipaddress.ip_address(f"192.0.2.{10 + j}"), 8000 + i, 1 + j)
            for j in range(per)
        )
        vip = ipaddress.ip_address(f"198.51.100.{1 + i // 200}")
        out.append(ServiceConfig(f"s{i}", vip, 1000 + i, real_servers=rs))
    return out


@dataclass
class World:
    """Config plus verdicts: what the daemon feeds the reconciler."""

    svcs: list[ServiceConfig]
    health: dict[tuple[str, str], Health] = field(default_factory=dict)

    def of(self, svc: ServiceConfig, rs: RealServer) -> Health:
        return self.health.get((svc.name, str(rs.address)), Health.UP)

    def source(self) -> ConfigDesired:
        return ConfigDesired(self.svcs, self.of)

    def set(self, i: int, j: int, h: Health) -> ServiceKey:
        svc = self.svcs[i]
        self.health[(svc.name, str(svc.real_servers[j].address))] = h
        return service_key(svc)


# table-driven: (event: service index, real server index, verdict) -> the actions of that pass
CASES: list[tuple[tuple[int, int, Health], list[str]]] = [
    ((0, 1, Health.DOWN), ["del_dest tcp/198.51.100.1:1000 -> 192.0.2.11:8000"]),
    ((2, 0, Health.DOWN), ["del_dest tcp/198.51.100.1:1002 -> 192.0.2.10:8002"]),
    (
        (0, 1, Health.UP),
        ["add_dest tcp/198.51.100.1:1000 -> 192.0.2.11:8000 weight=2 forwarding=nat"],
    ),
    ((1, 2, Health.UNKNOWN), []),  # adopted: the kernel's destination is kept as it is
    ((1, 2, Health.DOWN), ["del_dest tcp/198.51.100.1:1001 -> 192.0.2.12:8001"]),
]


def test_events_become_actions_of_their_service_only_without_reading_the_kernel() -> None:
    async def main() -> None:
        world = World(services(3))
        dp = MemoryDataplane()
        rec = Reconciler(dp)
        rec.set_desired(world.source())
        first = await rec.sync_now("start")
        assert first.ok and first.scope == "full" and dp.snapshot_calls == 1
        for (i, j, h), want in CASES:
            rec.mark_dirty({world.set(i, j, h)})
            res = await rec.sync_now("change")  # what the loop runs on a wake
            assert res.ok and res.scope == "services" and res.actions == want, (i, j, h)
        assert dp.snapshot_calls == 1  # no dump between events
        assert dp.table == world.source().build(dp.table)
        assert rec.kernel == dp.table

    run_virtual(main())


def test_the_loop_applies_a_health_change_with_no_snapshot() -> None:
    async def main() -> None:
        world = World(services(20))
        dp = MemoryDataplane()
        rec = Reconciler(dp, resync_interval=3600)
        rec.set_desired(world.source())
        await rec.start()
        try:
            await asyncio.wait_for(rec.wait_passes(1), 10)
            reads = dp.snapshot_calls
            rec.mark_dirty({world.set(7, 0, Health.DOWN), world.set(9, 0, Health.DOWN)})
            await asyncio.wait_for(rec.wait_passes(2), 10)
            assert dp.snapshot_calls == reads
            assert [str(a) for a in dp.applied[-2:]] == [
                "del_dest tcp/198.51.100.1:1007 -> 192.0.2.10:8007",
                "del_dest tcp/198.51.100.1:1009 -> 192.0.2.10:8009",
            ]
            assert rec.status().last_reason == "change"
        finally:
            await rec.stop()

    run_virtual(main())


def test_resync_repairs_drift_that_events_do_not_see() -> None:
    async def main() -> None:
        world = World(services(3))
        dp = MemoryDataplane()
        rec = Reconciler(dp)
        rec.set_desired(world.source())
        await rec.sync_now("start")
        key = service_key(world.svcs[1])
        dp.edit(lambda t: t.__delitem__(key))  # ipvsadm -D behind our back
        rec.mark_dirty({world.set(0, 0, Health.DOWN)})
        res = await rec.sync_now("change")
        assert res.actions == ["del_dest tcp/198.51.100.1:1000 -> 192.0.2.10:8000"]
        assert key not in dp.table  # an event pass trusts its view
        res = await rec.sync_now("resync")
        assert res.scope == "full" and res.drift == ["tcp/198.51.100.1:1001 missing"]
        assert dp.table == world.source().build(dp.table)

    run_virtual(main())


def test_an_error_drops_the_view_so_the_next_pass_reads_the_kernel() -> None:
    async def main() -> None:
        world = World(services(3))
        dp = MemoryDataplane()
        rec = Reconciler(dp)
        rec.set_desired(world.source())
        await rec.sync_now("start")
        dp.fail_next = 1
        rec.mark_dirty({world.set(0, 0, Health.DOWN)})
        res = await rec.sync_now("change")
        assert not res.ok and rec.kernel == {}
        rec.mark_dirty({world.set(1, 0, Health.DOWN)})
        res = await rec.sync_now("change")
        assert res.ok and res.scope == "full" and dp.snapshot_calls == 2
        assert len(res.actions) == 2  # both events: nothing is lost with the view
        assert dp.table == world.source().build(dp.table)

    run_virtual(main())


def test_a_reload_compares_the_whole_table_against_the_view_without_reading() -> None:
    async def main() -> None:
        world = World(services(600))
        dp = MemoryDataplane()
        rec = Reconciler(dp)
        rec.set_desired(world.source())
        first = await rec.sync_now("start")
        # 600 services + 1,800 destinations, in bounded batches (the result keeps 200 texts):
        # at most BATCH actions and BATCH_SERVICES services each
        least = max(-(-2400 // slices.BATCH), -(-600 // slices.BATCH_SERVICES))
        assert first.batches >= least > 1 and len(dp.applied) == 2400
        world.svcs = world.svcs[:-1]
        rec.set_desired(world.source())
        res = await rec.sync_now("change")
        assert res.scope == "table" and res.actions == ["del_service tcp/198.51.100.3:1599"]
        assert dp.snapshot_calls == 1

    run_virtual(main())


def test_a_reload_delta_keeps_ownership_and_the_gauges_by_its_own_services() -> None:
    async def main() -> None:
        world = World(services(5))
        dp = MemoryDataplane()
        metrics = Metrics()
        rec = Reconciler(dp, metrics=metrics)
        rec.set_desired(world.source())
        await rec.sync_now("start")
        gone, new = world.svcs[1], services(7, per=2)[6]  # one dropped, one added
        world.svcs = [s for s in world.svcs if s is not gone] + [new]
        rec.set_desired(world.source(), changed={service_key(gone), service_key(new)})
        res = await rec.sync_now("change")
        assert res.scope == "services" and dp.snapshot_calls == 1
        assert res.actions == [
            "add_service tcp/198.51.100.1:1006 scheduler=wrr persistence=0",
            "add_dest tcp/198.51.100.1:1006 -> 192.0.2.10:8006 weight=1 forwarding=nat",
            "add_dest tcp/198.51.100.1:1006 -> 192.0.2.11:8006 weight=2 forwarding=nat",
            "del_service tcp/198.51.100.1:1001",
        ]
        assert rec.owned == set(dp.table) == {service_key(s) for s in world.svcs}
        sample = metrics.registry.get_sample_value
        assert sample("hacontrol_dataplane_services") == 5
        assert sample("hacontrol_dataplane_destinations") == 4 * 3 + 2

    run_virtual(main())


SVC = [ServiceKey("tcp", "198.51.100.1", p) for p in range(1, 9)]
DST = [DestKey(f"192.0.2.{i}", 80) for i in range(1, 6)]
tables = st.dictionaries(
    st.sampled_from(SVC),
    st.builds(
        TableService,
        st.builds(ServiceSpec, st.sampled_from(["rr", "wrr"])),
        st.dictionaries(st.sampled_from(DST), st.builds(DestSpec, st.integers(0, 3))),
    ),
)


@settings(max_examples=200, deadline=None)
@given(tables, tables, st.sets(st.sampled_from(SVC)), st.integers(1, 4))
def test_sliced_diff_is_the_whole_diff(
    want: Table, have: Table, owned: set[ServiceKey], n: int
) -> None:
    old, slices.SLICE = slices.SLICE, n
    try:
        got = run_virtual(slices.diff_sliced(want, have, owned, forwarding_in_place=True))
    finally:
        slices.SLICE = old
    assert got == diff(want, have, owned)


events = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 2), st.sampled_from(list(Health))),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(events, st.sets(st.integers(0, 5)))
def test_incremental_passes_reach_the_table_a_full_pass_reaches(
    seq: list[tuple[int, int, Health]], weight0: set[int]
) -> None:
    """Any sequence of health events applied pass by pass (dirty services only) leaves the same
    kernel table as one full pass over the final verdicts."""

    async def main() -> None:
        svcs = [
            ServiceConfig(s.name, s.vip, s.port, real_servers=s.real_servers, on_failure="weight0")
            if i in weight0
            else s
            for i, s in enumerate(services(6))
        ]
        world = World(svcs)
        dp = MemoryDataplane()
        metrics = Metrics()
        rec = Reconciler(dp, metrics=metrics)
        rec.set_desired(world.source())
        await rec.sync_now("start")
        for i, j, h in seq:
            rec.mark_dirty({world.set(i, j, h)})
            assert (await rec.sync_now("change")).ok
            # the ownership and the table gauges, kept by each pass's own services, agree
            # with a recount of the whole table
            assert rec.owned == set(dp.table)
            sample = metrics.registry.get_sample_value
            assert sample("hacontrol_dataplane_services") == len(dp.table)
            assert sample("hacontrol_dataplane_destinations") == sum(
                len(s.dests) for s in dp.table.values()
            )
        ref = MemoryDataplane()
        full = Reconciler(ref)
        full.set_desired(world.source())
        await full.sync_now("start")
        # UNKNOWN adopts what the kernel holds: compare after the same adoption rule
        assert dp.table == world.source().build(dp.table)
        assert set(dp.table) == set(ref.table)
        assert dp.snapshot_calls == 1

    run_virtual(main())
