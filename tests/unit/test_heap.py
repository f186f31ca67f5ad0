"""The daemon's garbage-collector policy (hacontrol.heap.Settler) and where the reconciler uses it.

``hold()`` must keep full (generation 2) collections out of a whole-table pass and give the
thresholds back afterwards, also after an error; the reconciler must hold only passes over the
whole table (start, resync, a reload without a known delta) and settle after them, never for a
health change's pass (which must stay as it was: small, and collected as usual)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import pytest

from hacontrol.clock import virtual
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.heap import NO_FULL, Settler

S1 = ServiceKey("tcp", "198.51.100.10", 80)
D1 = DestKey("192.0.2.11", 80)


def _full_collections(work: int) -> int:
    """Generation-2 collections while ``work`` live containers are made (kept until the end)."""
    seen: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            seen.append(1)

    gc.callbacks.append(watch)
    try:
        keep = [[i] for i in range(work)]
        del keep
    finally:
        gc.callbacks.remove(watch)
    return len(seen)


def test_hold_keeps_full_collections_out_and_gives_the_thresholds_back() -> None:
    before = gc.get_threshold()
    heap = Settler()
    # a full collection starts once the new long-lived objects exceed a quarter of the old ones
    work = len(gc.get_objects(2)) // 2 + 200_000
    assert _full_collections(work) > 0  # the baseline: this much work does start them
    with heap.hold():
        assert gc.get_threshold() == (before[0], before[1], NO_FULL)
        assert heap.holding
        assert _full_collections(work) == 0
        gc.collect(0)  # the young generations are still collected
    assert gc.get_threshold() == before and not heap.holding


def test_hold_is_undone_by_an_error_and_nests() -> None:
    before = gc.get_threshold()
    heap = Settler()
    with pytest.raises(RuntimeError), heap.hold():
        with heap.hold():  # nested: the outer one restores
            pass
        assert gc.get_threshold()[2] == NO_FULL
        raise RuntimeError("a pass failed")
    assert gc.get_threshold() == before


class Policy:
    """Records what the reconciler asks of the heap policy."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.holding = False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        self.events.append("hold")
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            self.events.append("release")

    def settle(self, reason: str = "", now: bool = False) -> None:
        self.events.append("settle" if self.holding else "settle-outside")


@virtual
async def test_the_reconciler_holds_whole_passes_only() -> None:
    dp = MemoryDataplane()
    heap = Policy()
    rec = Reconciler(dp, heap=heap)
    svc = TableService(ServiceSpec(), {D1: DestSpec(1)})
    rec.set_desired(lambda actual: {S1: svc})
    await rec.sync_now("start")  # a full pass: held, settled inside
    assert heap.events == ["hold", "settle", "release"]
    heap.events.clear()
    rec.mark_dirty([S1])
    await rec.sync_now("change")  # a health change's pass: nothing
    assert heap.events == []
    rec.set_desired(lambda actual: {S1: svc})  # a reload without a delta: the whole table
    await rec.sync_now("change")
    assert heap.events == ["hold", "settle", "release"]
    heap.events.clear()
    await rec.sync_now("resync")
    assert heap.events == ["hold", "settle", "release"]
