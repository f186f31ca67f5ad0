"""The reconcile loop: keep the kernel table equal to the desired table (the data plane I/O shell).

Two kinds of pass. A FULL pass (start, the periodic resync, a retry after an error, ``sync_now``)
reads the kernel (``snapshot``), builds the whole desired table and compares the two, both in
bounded slices that yield to the event loop (``hacontrol.dataplane.slices``), and applies the
difference in bounded batches. A CHANGE pass reads nothing: the reconciler keeps its view of the
kernel (the last snapshot advanced by every action the kernel acknowledged), and compares only
the services marked dirty (``mark_dirty``: a health change touches a few) against that view, or
the whole desired table against the view after ``set_desired`` (a reload). The kernel's answer to
the actions (netlink acks, the nft transaction) is the confirmation; the next full pass repairs
anything else (drift: hand edits, ``ipvsadm -C``, ``nft flush ruleset``); a plane that sees
foreign changes as they happen (nftables: ``Dataplane.watch``) asks for that full pass at once
(``request_resync``, reason ``foreign``). After an error the view is dropped, so the next pass is
a full one.

Passes run on a wake (bursts in one event-loop tick coalesce into one pass; change passes start
at most every ``coalesce`` seconds, so a mass failure, which the checks detect spread over one
check interval, lands in a few batches while a lone event still goes at once), every
``resync_interval`` and, after an error, on an exponential backoff (a change arriving during the
backoff is tried after the shortest backoff: the new desired table may be the fix). An error of
the plane or of the builder is logged (``dataplane.error``), counted, shown in ``status()`` and
retried; it never ends the loop. Log events: ``dataplane.apply``, ``dataplane.drift``,
``dataplane.error``, ``dataplane.recovered``, ``dataplane.owned_error``,
``dataplane.foreign_change``. This module owns the
view, the dirty marks, the owned services and the loop; the record of the passes (outcome,
backoff, counters, metrics, the apply/error logs) is ``hacontrol.dataplane.reconcile_status``.

One clock: "now" (backoff deadlines, pass times, the status) is read from ``clock``, which must be
the event loop's own clock, because the waits run on the loop (``asyncio.timeout``,
``asyncio.sleep``). By default it is: the running loop's ``time()``. On a
``hacontrol.clock.VirtualTimeLoop`` the whole loop runs in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.dataplane.base import Dataplane, DataplaneError
from hacontrol.dataplane.desired import DesiredSource
from hacontrol.dataplane.diff import apply_in_place
from hacontrol.dataplane.owned import OwnedStore, OwnedStoreError
from hacontrol.dataplane.reconcile_status import PassRecord, ReconcileResult, ReconcileStatus
from hacontrol.dataplane.slices import batches, build_sliced, describe_sliced, diff_sliced
from hacontrol.dataplane.table import ServiceKey, Table, copy_table
from hacontrol.metrics import Metrics
from hacontrol.tasks import cancel_and_wait

__all__ = ["Build", "ReconcileResult", "ReconcileStatus", "Reconciler"]

log = logs.get("hacontrol.dataplane.reconciler")


def _loop_time() -> float:
    """The running event loop's clock; outside a loop, the monotonic clock asyncio's loop reads
    (only ``status()`` can be asked there)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


Build = Callable[[Table], Table]
BIG_PASS = 1000  # actions: a pass this big (or over the whole table) calls ``heap.settle``


class HeapPolicy(Protocol):
    """The daemon's garbage-collector policy (``hacontrol.heap.Settler``): ``hold()`` spans each
    pass over the whole table (no full collection walks the tables it builds meanwhile),
    ``settle()`` follows each big pass (freeze what it left)."""

    def hold(self) -> AbstractContextManager[None]: ...

    def settle(self, reason: str = ..., now: bool = ...) -> None: ...


class Reconciler:
    def __init__(
        self,
        dataplane: Dataplane,
        *,
        clock: Clock | None = None,
        resync_interval: float = 10.0,
        owned_store: OwnedStore | None = None,
        metrics: Metrics | None = None,
        backoff: tuple[float, float] = (0.1, 10.0),
        timeout: float = 30.0,
        coalesce: float = 0.1,
        heap: HeapPolicy | None = None,
    ) -> None:
        if resync_interval <= 0 or backoff[0] <= 0 or backoff[1] < backoff[0] or timeout <= 0:
            raise ValueError("resync_interval, backoff and timeout must be positive")
        if coalesce < 0:
            raise ValueError("coalesce must not be negative")
        self._coalesce = coalesce
        self._heap = heap  # the daemon's GC policy around whole-table passes (None: none)
        self._dp = dataplane
        self._clock: Clock = clock if clock is not None else _loop_time
        self._resync = resync_interval
        self._store = owned_store
        self._backoff = backoff
        self._timeout = timeout
        self._build: Build | None = None
        self._source: DesiredSource | None = None
        self._dirty: set[ServiceKey] = set()  # services whose desired state may have changed
        self._all_dirty = False  # the whole desired table may have changed (set_desired)
        self._view: Table | None = None  # the kernel as we know it; None: read it (full pass)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._owned: set[ServiceKey] = set()
        self._dests = 0  # destinations of the owned services in the view (the table gauge)
        self._owned_loaded = False
        self._record = PassRecord(dataplane.kind, self._clock, metrics=metrics, backoff=backoff)
        self._last_start: float | None = None  # when the last pass began (the coalescing)
        self._resync_wanted = False  # a foreign change was seen: the next pass reads the kernel

    # -- public API -------------------------------------------------------------------------

    def set_desired(
        self, build: Build | DesiredSource, changed: Iterable[ServiceKey] | None = None
    ) -> None:
        """Set the desired table (a ``DesiredSource``, or a function of the actual table) and
        wake the loop: the next pass compares the whole desired table with the view, or only
        the services ``changed`` (a reload's delta: the others' desired state is the same)."""
        if callable(build):
            self._build, self._source = build, None
        else:
            self._build, self._source = None, build
        if changed is None:
            self._all_dirty = True
        else:
            self._dirty.update(changed)
        self._wake.set()

    def mark_dirty(self, keys: Iterable[ServiceKey]) -> None:
        """The desired state of these services may have changed (a health change): the next
        pass compares only them with the view, and reads nothing from the kernel."""
        self._dirty.update(keys)
        self._wake.set()

    async def start(self) -> None:
        """Load the owned services and start the loop (first pass immediately)."""
        if self._task is not None:
            return
        self._load_owned()
        self._task = asyncio.create_task(self._run(), name="hacontrol-reconciler")
        self._dp.watch(self.request_resync)

    def request_resync(self, reason: str, changes: int = 1) -> None:
        """Someone else changed the kernel table (``changes`` times, coalesced by the caller:
        the plane's notification watch): the next pass, at once, is a full one (reason
        ``foreign``). Logged ``dataplane.foreign_change`` and counted."""
        self._record.foreign(reason, changes)
        self._resync_wanted = True
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop (the kernel table is left as it is; closing the plane is the owner's)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def sync_now(self, reason: str = "manual") -> ReconcileResult:
        """Run one pass now (tests, the API), regardless of the backoff: a full pass, except for
        reason ``change`` (what the loop runs on a wake: only what changed, against the view)."""
        self._load_owned()
        return await self._pass(reason)

    def status(self) -> ReconcileStatus:
        return self._record.status(owned=len(self._owned))

    @property
    def kernel(self) -> Table:
        """The kernel table as we know it (the last read advanced by the acknowledged actions),
        foreign services included; empty before the first pass and after an error."""
        return self._view if self._view is not None else {}

    @property
    def owned(self) -> frozenset[ServiceKey]:
        return frozenset(self._owned)

    async def wait_passes(self, count: int) -> None:
        """Wait until at least ``count`` passes ran in total (tests wrap it in a timeout)."""
        await self._record.wait_passes(count)

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        reason = "start"
        while True:
            await self._pass(reason)
            reason = await self._wait_next()

    async def _wait_next(self) -> str:
        retry_at, last_pass_at = self._record.retry_at, self._record.last_pass_at
        if retry_at is not None:
            try:
                async with asyncio.timeout(max(0.0, retry_at - self._clock())):
                    await self._wake.wait()
            except TimeoutError:
                return "retry"
            # a new desired table (e.g. a fixed config) may succeed: try it soon, not in a loop
            await asyncio.sleep(self._backoff[0])
            return "change"
        since = 0.0 if last_pass_at is None else self._clock() - last_pass_at
        try:
            async with asyncio.timeout(max(0.0, self._resync - since)):
                await self._wake.wait()
        except TimeoutError:
            return "resync"
        await asyncio.sleep(0)  # let the rest of a burst in this tick arrive first
        if self._last_start is not None:  # a burst: one pass per ``coalesce`` at most
            rest = self._coalesce - (self._clock() - self._last_start)
            if rest > 0:
                await asyncio.sleep(rest)
        return "change"

    async def _pass(self, reason: str) -> ReconcileResult:
        async with self._lock:
            self._wake.clear()
            wanted, self._resync_wanted = self._resync_wanted, False  # any full pass serves
            if wanted and reason == "change":
                reason = "foreign"
            self._last_start = self._clock()
            started = time.perf_counter()
            if reason == "resync":
                self._record.resync()
            whole = reason != "change" or self._view is None or self._all_dirty
            held = self._heap.hold() if whole and self._heap else contextlib.nullcontext()
            try:
                with held:
                    async with asyncio.timeout(self._timeout):
                        result = await self._reconcile(reason, started)
            except Exception as e:  # the plane or the builder: never fatal
                result = self._failed(reason, e, started)
            else:
                self._record.succeeded(reason)
            self._record.pass_done(reason)
            return result

    async def _reconcile(self, reason: str, started: float) -> ReconcileResult:
        full = reason != "change" or self._view is None
        scope: Collection[ServiceKey] | None = None  # None: every service
        if full:
            actual = await self._dp.snapshot(set(self._owned))
            drift = await self._drift(actual)
            label = "full"
        else:
            assert self._view is not None
            actual, drift = self._view, []
            if not self._all_dirty:
                scope = set(self._dirty)
            label = "table" if scope is None else "services"
        self._dirty.clear()  # taken: on an error the view is dropped and a full pass follows
        self._all_dirty = False
        # what we own among the services this pass looks at (only the scope's on a change
        # pass: nothing here is O(table) then); a whole-table plane owns what it finds
        keys = self._owned if scope is None else {k for k in scope if k in self._owned}
        owned = set(keys)
        if self._dp.whole_table:
            owned |= set(actual) if scope is None else {k for k in scope if k in actual}
        if self._build is None and self._source is None:  # nothing desired yet: only observe
            self._view = actual
            return ReconcileResult(True, reason, drift=drift, duration=self._since(started))
        if self._source is not None:
            desired = await build_sliced(self._source, actual, scope)
        else:
            assert self._build is not None
            whole = self._build(copy_table(actual))
            desired = whole if scope is None else {k: whole[k] for k in scope if k in whole}
        in_place = self._dp.forwarding_in_place
        actions = await diff_sliced(
            desired, actual, owned, forwarding_in_place=in_place, scope=scope
        )
        if drift:
            log.warning("dataplane.drift", reason=reason, differences=drift[:20], count=len(drift))
        texts = [str(a) for a in actions[:200]]
        # owned after this pass, as a change to the looked-at part (keys the scope's own)
        adds, drops = set(desired) - owned, owned - set(desired)
        dests_before = self._dests_of(actual, keys)  # what the gauge counted of them
        parts = batches(actions)
        if actions:
            if adds or owned - self._owned:  # remember new services BEFORE creating them
                self._save_owned(self._owned | owned | adds)  # (crash safety)
            self._view = None  # until every batch is acknowledged
            fresh = (owned | adds) - self._owned  # (scope-sized on a change pass)
            self._dp.expect(len(self._owned) + len(fresh) - len(drops))  # (drops: of owned)
            for n, part in enumerate(parts):
                if n:
                    await asyncio.sleep(0)  # the heartbeat and the checks run between batches
                touched = {a.service for a in part}
                await self._dp.apply({k: v for k, v in desired.items() if k in touched}, part)
                apply_in_place(actual, part)  # acknowledged: the view follows
            duration = self._since(started)
            self._record.applied(reason, actions, texts, drift, duration, label, len(parts))
        if adds or drops or owned - self._owned:  # (no copy of the whole set otherwise)
            self._owned = (self._owned | owned | adds) - drops
            self._save_owned(self._owned)
        if scope is None:
            self._dests = self._dests_of(actual, self._owned)
        else:  # the change of the looked-at part only
            self._dests += self._dests_of(actual, (owned | adds) - drops) - dests_before
        self._view = actual
        if self._heap is not None and (scope is None or len(actions) >= BIG_PASS):
            self._heap.settle()
        self._record.table(len(self._owned), self._dests)
        return ReconcileResult(
            True,
            reason,
            texts,
            drift,
            duration=self._since(started),
            scope=label,
            batches=len(parts) if actions else 0,
        )

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _dests_of(table: Table, keys: Iterable[ServiceKey]) -> int:
        return sum(len(table[k].dests) for k in keys if k in table)

    async def _drift(self, actual: Table) -> list[str]:
        """How the kernel differs from our view of it (owned part; none without a view)."""
        if self._view is None:
            return []
        return await describe_sliced(self._view, actual, set(self._owned))

    def _failed(self, reason: str, e: Exception, started: float) -> ReconcileResult:
        text = f"{type(e).__name__}: {e}" if not isinstance(e, DataplaneError) else str(e)
        if isinstance(e, TimeoutError):
            text = f"timed out after {self._timeout}s"
        self._view = None  # a partial apply may have changed the kernel: read it next time
        self._record.failed(reason, text)
        return ReconcileResult(False, reason, error=text, duration=self._since(started))

    def _load_owned(self) -> None:
        if self._owned_loaded:
            return
        self._owned_loaded = True
        if self._store is None:
            return
        try:
            self._owned = self._store.load()
        except OwnedStoreError as e:
            log.error("dataplane.owned_error", reason="load", error=str(e))

    def _save_owned(self, keys: set[ServiceKey]) -> None:
        if self._store is None:
            return
        try:
            self._store.save(keys)
        except OwnedStoreError as e:  # not fatal: the table is still right, only restart memory
            log.error("dataplane.owned_error", reason="save", error=str(e))

    @staticmethod
    def _since(started: float) -> float:
        return time.perf_counter() - started
