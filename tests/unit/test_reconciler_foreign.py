"""``Reconciler.request_resync``: a foreign change seen by the plane's watch (nftables
notifications) makes the next pass, at once, a full one that reads the kernel and repairs it,
logged ``dataplane.foreign_change`` and counted, long before the periodic resync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from structlog.testing import capture_logs

from hacontrol.clock import virtual
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
    copy_table,
)
from hacontrol.metrics import Metrics

S1 = ServiceKey("tcp", "198.51.100.10", 80)
D1 = DestKey("192.0.2.11", 80)
WANT: Table = {S1: TableService(ServiceSpec(), {D1: DestSpec(1)})}


def const(table: Table) -> Callable[[Table], Table]:
    return lambda actual: copy_table(table)


@virtual
async def test_a_foreign_change_is_repaired_by_a_full_pass_at_once() -> None:
    dp = MemoryDataplane(whole_table=True)
    metrics = Metrics()
    rec = Reconciler(dp, resync_interval=3600, metrics=metrics)
    rec.set_desired(const(WANT))
    await rec.start()
    try:
        await asyncio.wait_for(rec.wait_passes(1), 10)
        assert dp.table == WANT
        passes, t0 = rec.status().passes, asyncio.get_running_loop().time()
        dp.edit(lambda t: t.clear())  # someone flushed our table
        with capture_logs() as logs:
            rec.request_resync("delrule x3 by nft (pid 42)", 2)
            await asyncio.wait_for(rec.wait_passes(passes + 1), 10)
        assert dp.table == WANT
        st = rec.status()
        assert st.last_reason == "foreign" and st.drift_repairs == 1
        assert asyncio.get_running_loop().time() - t0 < 3600  # not the periodic resync
        seen = [e for e in logs if e["event"] == "dataplane.foreign_change"]
        assert [(e["reason"], e["changes"]) for e in seen] == [("delrule x3 by nft (pid 42)", 2)]
        assert metrics.foreign_changes._value.get() == 2
        assert metrics.resyncs._value.get() == 0
    finally:
        await rec.stop()


@virtual
async def test_without_a_request_a_wake_is_a_change_pass_that_reads_nothing() -> None:
    dp = MemoryDataplane(whole_table=True)
    rec = Reconciler(dp, resync_interval=3600)
    rec.set_desired(const(WANT))
    await rec.start()
    try:
        await asyncio.wait_for(rec.wait_passes(1), 10)
        reads = dp.snapshot_calls
        rec.mark_dirty([S1])
        await asyncio.wait_for(rec.wait_passes(2), 10)
        assert rec.status().last_reason == "change" and dp.snapshot_calls == reads
        rec.request_resync("deltable x1 by nft (pid 7)")
        await asyncio.wait_for(rec.wait_passes(3), 10)
        assert rec.status().last_reason == "foreign" and dp.snapshot_calls == reads + 1
    finally:
        await rec.stop()
