"""The reconcile loop over the in-memory plane; also the owned store, memory plane and selection.

Every test runs on a ``VirtualTimeLoop`` (``@virtual``): the reconciler's clock is the loop's, so
resyncs, backoffs and polls take no real time."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.clock import virtual
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.desired import desired_table
from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.owned import OwnedStore, OwnedStoreError
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.select import open_dataplane, resolve_kind
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
    copy_table,
)
from hacontrol.health.state import Health
from hacontrol.metrics import Metrics
from hacontrol.model import DataplaneConfig, RealServer, ServiceConfig

S1 = ServiceKey("tcp", "198.51.100.10", 80)
S2 = ServiceKey("tcp", "198.51.100.11", 80)
FOREIGN = ServiceKey("tcp", "198.51.100.99", 80)
D1, D2 = DestKey("192.0.2.11", 80), DestKey("192.0.2.12", 80)
WANT: Table = {S1: TableService(ServiceSpec(), {D1: DestSpec(1), D2: DestSpec(2)})}
FOREIGN_SVC = TableService(ServiceSpec("rr"), {D1: DestSpec(1)})


def const(table: Table) -> Callable[[Table], Table]:
    return lambda actual: copy_table(table)


async def eventually(pred: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a condition with a deadline (the loop under test has no event for each state)."""
    async with asyncio.timeout(limit):
        while not pred():  # noqa: ASYNC110 - polling state owned by the code under test
            await asyncio.sleep(0.005)


@virtual
async def test_sync_applies_only_the_difference() -> None:
    dp = MemoryDataplane()
    rec = Reconciler(dp)
    rec.set_desired(const(WANT))
    res = await rec.sync_now()
    assert res.ok and len(res.actions) == 3
    assert dp.table == WANT and rec.kernel == WANT
    res = await rec.sync_now()
    assert res.ok and res.actions == [] and dp.apply_calls == 1
    st = rec.status()
    assert st.kind == "memory" and st.applies == 1 and st.ok and st.owned == 1
    assert st.last_actions[0] == "add_service tcp/198.51.100.10:80 scheduler=wrr persistence=0"


@virtual
async def test_loop_applies_on_change_and_coalesces_bursts() -> None:
    dp = MemoryDataplane()
    rec = Reconciler(dp, resync_interval=60)
    await rec.start()
    try:
        await asyncio.wait_for(rec.wait_passes(1), 10)  # the start pass
        for w in range(1, 11):  # a burst in one tick: one pass with the last
            rec.set_desired(const({S1: TableService(ServiceSpec(), {D1: DestSpec(w)})}))
        await eventually(lambda: rec.status().applies == 1)
        assert dp.table[S1].dests[D1] == DestSpec(10)
        assert dp.apply_calls == 1
        rec.set_desired(const({}))
        await eventually(lambda: dp.table == {})
        assert rec.status().last_reason == "change"
    finally:
        await rec.stop()


@virtual
async def test_resync_repairs_drift_and_logs_it() -> None:
    dp = MemoryDataplane()
    metrics = Metrics()
    rec = Reconciler(dp, resync_interval=0.02, metrics=metrics)
    rec.set_desired(const(WANT))
    await rec.start()
    try:
        await eventually(lambda: dp.table == WANT)
        with capture_logs() as logs:
            dp.edit(lambda t: t.clear())  # like ipvsadm -C
            await eventually(lambda: rec.status().drift_repairs == 1)
        assert dp.table == WANT
        drift = [e for e in logs if e["event"] == "dataplane.drift"]
        assert drift and drift[0]["reason"] == "resync"
        assert drift[0]["differences"] == ["tcp/198.51.100.10:80 missing"]
        apply = [e for e in logs if e["event"] == "dataplane.apply"]
        assert apply[0]["reason"] == "resync" and apply[0]["actions"] == 3
        assert metrics.drift_repairs._value.get() == 1
        assert metrics.resyncs._value.get() >= 1
    finally:
        await rec.stop()


@virtual
async def test_error_backoff_and_recovery_on_the_loop_clock() -> None:
    dp = MemoryDataplane(fail_next=4)
    metrics = Metrics()
    rec = Reconciler(dp, backoff=(0.1, 0.3), metrics=metrics)
    rec.set_desired(const(WANT))
    with capture_logs() as logs:
        retries = []
        for _ in range(4):
            res = await rec.sync_now("retry")
            assert not res.ok and res.error == "memory: injected apply failure"
            retries.append(rec.status().next_retry_in)
        st = rec.status()
        assert st.consecutive_errors == 4 and not st.ok and st.error is not None
        assert retries == pytest.approx([0.1, 0.2, 0.3, 0.3])  # doubling, capped
        await asyncio.sleep(0.1)  # virtual: the status reads the loop's clock
        assert rec.status().next_retry_in == pytest.approx(0.2)
        res = await rec.sync_now("retry")
    assert res.ok and dp.table == WANT
    st = rec.status()
    assert st.ok and st.consecutive_errors == 0 and st.next_retry_in is None and st.error is None
    errors = [e for e in logs if e["event"] == "dataplane.error"]
    assert len(errors) == 4 and errors[0]["error"] == "memory: injected apply failure"
    assert [e["event"] for e in logs].count("dataplane.recovered") == 1
    assert metrics.apply_errors._value.get() == 4


@virtual
async def test_loop_survives_errors_and_retries() -> None:
    dp = MemoryDataplane(fail_next=2, fail_snapshots=1)
    rec = Reconciler(dp, resync_interval=60, backoff=(0.01, 0.05))
    rec.set_desired(const(WANT))
    await rec.start()
    try:
        await eventually(lambda: dp.table == WANT and rec.status().ok)
        st = rec.status()
        assert st.last_reason == "retry" and st.passes >= 4
    finally:
        await rec.stop()


@virtual
async def test_change_during_a_long_backoff_is_tried_soon() -> None:
    dp = MemoryDataplane(fail_next=13)
    rec = Reconciler(dp, resync_interval=60, backoff=(0.01, 60))
    rec.set_desired(const(WANT))
    for _ in range(12):
        assert not (await rec.sync_now()).ok
    await rec.start()  # the start pass fails too: the next retry is a minute away
    try:
        await eventually(lambda: rec.status().consecutive_errors == 13)
        retry = rec.status().next_retry_in
        assert retry is not None and retry > 30
        other = {S2: TableService(ServiceSpec(), {D1: DestSpec(1)})}
        rec.set_desired(const(other))  # e.g. the config was fixed
        await eventually(lambda: dp.table == other, limit=5)
        assert rec.status().ok and rec.status().last_reason == "change"
    finally:
        await rec.stop()


@virtual
async def test_builder_exception_is_an_error_not_a_crash() -> None:
    def broken(actual: Table) -> Table:
        raise ValueError("services a and b both use tcp/198.51.100.10:80")

    rec = Reconciler(MemoryDataplane())
    rec.set_desired(broken)
    res = await rec.sync_now()
    assert not res.ok and res.error is not None and "both use" in res.error
    rec.set_desired(const(WANT))
    assert (await rec.sync_now()).ok


@virtual
async def test_plane_that_does_not_apply_is_caught_by_the_next_full_pass() -> None:
    """The kernel's acknowledgement is the confirmation (no read after an apply); a plane that
    acknowledged without applying shows up at the next full pass as drift, and is repaired."""

    class Deaf(MemoryDataplane):
        deaf = True

        async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
            if self.deaf:
                self.apply_calls += 1
                return
            await super().apply(desired, actions)

    dp = Deaf()
    rec = Reconciler(dp)
    rec.set_desired(const(WANT))
    res = await rec.sync_now()
    assert res.ok and dp.snapshot_calls == 1 and rec.kernel == WANT and dp.table == {}
    dp.deaf = False
    res = await rec.sync_now("resync")
    assert res.drift == ["tcp/198.51.100.10:80 missing"] and len(res.actions) == 3
    assert dp.table == WANT


@virtual
async def test_the_plane_is_told_the_size_a_pass_leaves_once_before_its_batches() -> None:
    """A whole-table plane that lays out its objects by size (nftables' service tables) hears
    the services a pass will leave before the first batch: a first load in batches, a reload
    growing and shrinking, a change."""

    class Sized(MemoryDataplane):
        def __init__(self) -> None:
            super().__init__(whole_table=True)
            self.told: list[tuple[int, int]] = []  # (services told, apply calls so far)

        def expect(self, services: int) -> None:
            self.told.append((services, self.apply_calls))

    def many(n: int, skip: int = -1) -> Table:
        one = TableService(ServiceSpec(), {D1: DestSpec(1)})
        return {ServiceKey("tcp", "198.51.100.10", 1000 + i): one for i in range(n) if i != skip}

    dp = Sized()
    rec = Reconciler(dp)
    rec.set_desired(const(many(150)))
    res = await rec.sync_now("start")
    assert res.ok and res.batches > 1 and dp.told == [(150, 0)]
    rec.set_desired(const(many(40)))
    calls = dp.apply_calls
    assert (await rec.sync_now("reload")).ok and dp.told[-1] == (40, calls)
    rec.set_desired(const(many(40, skip=7)))
    rec.mark_dirty({ServiceKey("tcp", "198.51.100.10", 1007)})
    res = await rec.sync_now("change")
    assert res.ok and dp.told[-1][0] == 39 and len(dp.table) == 39
    told = len(dp.told)
    assert (await rec.sync_now("resync")).ok and len(dp.told) == told  # nothing to apply


@virtual
async def test_foreign_services_untouched() -> None:
    dp = MemoryDataplane({FOREIGN: FOREIGN_SVC})
    rec = Reconciler(dp)
    rec.set_desired(const(WANT))
    await rec.sync_now()
    rec.set_desired(const({}))
    await rec.sync_now()
    assert dp.table == {FOREIGN: FOREIGN_SVC}
    assert all(a.service != FOREIGN for a in dp.applied)
    assert rec.kernel == {FOREIGN: FOREIGN_SVC}  # the kernel view includes it
    assert rec.owned == frozenset()


@virtual
async def test_whole_table_plane_owns_everything_it_reads() -> None:
    """A plane holding only our own table (nftables): a service there that the owned file does
    not know is still ours, deleted by an explicit action, never silently."""

    dp = MemoryDataplane({FOREIGN: FOREIGN_SVC}, whole_table=True)
    rec = Reconciler(dp)
    rec.set_desired(const(WANT))
    res = await rec.sync_now()
    assert res.ok and "del_service tcp/198.51.100.99:80" in res.actions
    assert dp.table == WANT


@virtual
async def test_owned_survives_restart_so_a_removed_service_is_cleaned(tmp_path: Path) -> None:
    store = OwnedStore(tmp_path / "state")
    dp = MemoryDataplane({FOREIGN: FOREIGN_SVC})
    two = {**WANT, S2: TableService(ServiceSpec(), {D1: DestSpec(1)})}
    rec = Reconciler(dp, owned_store=store)
    rec.set_desired(const(two))
    assert (await rec.sync_now()).ok
    assert store.load() == {S1, S2}
    # restart with S2 gone from the config: the new daemon still knows it owned S2
    rec2 = Reconciler(dp, owned_store=OwnedStore(tmp_path / "state"))
    rec2.set_desired(const(WANT))
    res = await rec2.sync_now()
    assert res.actions == ["del_service tcp/198.51.100.11:80"]
    assert dp.table == {**WANT, FOREIGN: FOREIGN_SVC}
    assert store.load() == {S1}


@virtual
async def test_restart_adopts_the_kernel_table_without_changes() -> None:
    """desired_table(..., actual) with no verdicts yet keeps the running table as it is."""
    rs = (RealServer(ipaddress.ip_address("192.0.2.11"), 80, 5),)
    svc = ServiceConfig("web", ipaddress.ip_address("198.51.100.10"), 80, real_servers=rs)
    running: Table = {S1: TableService(ServiceSpec(), {D1: DestSpec(1)})}
    dp = MemoryDataplane(running)
    rec = Reconciler(dp)
    rec.set_desired(lambda actual: desired_table([svc], lambda s, r: Health.UNKNOWN, actual))
    res = await rec.sync_now()
    assert res.ok and res.actions == [] and dp.table == running
    rec.set_desired(lambda actual: desired_table([svc], lambda s, r: Health.UP, actual))
    res = await rec.sync_now()
    assert res.actions == [
        "update_dest tcp/198.51.100.10:80 -> 192.0.2.11:80 weight=5 forwarding=nat"
    ]


@virtual
async def test_no_desired_yet_only_observes() -> None:
    dp = MemoryDataplane({FOREIGN: FOREIGN_SVC})
    rec = Reconciler(dp)
    res = await rec.sync_now()
    assert res.ok and res.actions == [] and rec.kernel == {FOREIGN: FOREIGN_SVC}


def test_owned_store_roundtrip_and_bad_file(tmp_path: Path) -> None:
    store = OwnedStore(tmp_path)
    assert store.load() == set()
    keys = {S1, ServiceKey("udp", "2001:db8::10", 53)}
    store.save(keys)
    assert store.load() == keys
    assert [p.name for p in tmp_path.iterdir()] == ["owned-services.json"]  # no temp left
    store.path.write_text('{"version": 1, "services": [{"protocol": "sctp"}]}')
    with pytest.raises(OwnedStoreError, match="not a valid ownership file"):
        store.load()


@virtual
async def test_bad_owned_file_is_logged_and_treated_as_empty(tmp_path: Path) -> None:
    store = OwnedStore(tmp_path)
    store.path.write_text("not json")
    dp = MemoryDataplane({FOREIGN: FOREIGN_SVC})
    rec = Reconciler(dp, owned_store=store)
    rec.set_desired(const({}))
    with capture_logs() as logs:
        assert (await rec.sync_now()).ok
    assert dp.table == {FOREIGN: FOREIGN_SVC}
    assert any(e["event"] == "dataplane.owned_error" for e in logs)


@virtual
async def test_memory_plane_refuses_invalid_actions_and_echoes() -> None:
    lines: list[str] = []
    dp = MemoryDataplane(echo=lines.append)
    with pytest.raises(DataplaneError, match="no such service"):
        await dp.apply({}, [Action("del_service", S1)])
    await dp.apply(WANT, [Action("add_service", S1, spec=ServiceSpec())])
    assert lines == ["would apply: add_service tcp/198.51.100.10:80 scheduler=wrr persistence=0"]


@virtual
async def test_select(tmp_path: Path) -> None:
    missing = str(tmp_path / "no_ip_vs")
    assert resolve_kind(DataplaneConfig(kind="auto"), missing) == "nftables"
    (tmp_path / "ip_vs").write_text("")
    assert resolve_kind(DataplaneConfig(kind="auto"), str(tmp_path / "ip_vs")) == "ipvs"
    with pytest.raises(DataplaneError, match=r"kernel has no IPVS \(.* missing; modprobe ip_vs\)"):
        await open_dataplane(DataplaneConfig(kind="ipvs"), proc=missing)
    plane = await open_dataplane(DataplaneConfig(kind="memory"))
    assert plane.kind == "memory"
    lines: list[str] = []
    plane = await open_dataplane(DataplaneConfig(kind="memory"), dry_run=True, echo=lines.append)
    assert isinstance(plane, MemoryDataplane) and plane.echo is not None
