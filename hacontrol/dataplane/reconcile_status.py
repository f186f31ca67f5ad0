"""The reconciler's record of its passes: outcome, errors and backoff, counters, metrics, logs.

``PassRecord`` owns what ``Reconciler.status()`` shows and what the loop's timing reads back:
whether the last pass succeeded, the consecutive errors and the retry deadline they set (an
exponential backoff between ``backoff[0]`` and ``backoff[1]``), when the last pass ran and the last
apply changed the kernel, the counts of passes, applies and drift repairs. It also feeds the
Prometheus metrics of the data plane and logs ``dataplane.apply``, ``dataplane.error``,
``dataplane.foreign_change`` and ``dataplane.recovered``. ``hacontrol.dataplane.reconciler``
decides and applies; it tells this record what happened through a few calls and reads nothing of
it but ``retry_at``, ``last_pass_at`` and ``status()``. "Now" comes from the reconciler's clock
(the event loop's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.dataplane.diff import Action
from hacontrol.metrics import Metrics

log = logs.get("hacontrol.dataplane.reconciler")


@dataclass(frozen=True)
class ReconcileResult:
    """The outcome of one pass."""

    ok: bool
    reason: str  # start | change | resync | retry | manual | foreign
    actions: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # how the kernel differed from what we left
    error: str | None = None
    duration: float = 0.0
    scope: str = "full"  # full (kernel read) | table (view, whole desired) | services (dirty)
    batches: int = 0


@dataclass(frozen=True)
class ReconcileStatus:
    kind: str
    last_apply_at: float | None  # monotonic time of the last pass that changed the kernel
    ok: bool  # the last pass succeeded
    error: str | None
    consecutive_errors: int
    next_retry_in: float | None  # seconds, while an error is pending
    last_actions: list[str]
    applies: int
    drift_repairs: int
    passes: int = 0
    last_pass_at: float | None = None
    last_reason: str | None = None
    owned: int = 0


class PassRecord:
    """What the passes of one reconciler did (see module doc)."""

    def __init__(
        self,
        kind: str,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        backoff: tuple[float, float] = (0.1, 10.0),
    ) -> None:
        self.kind = kind
        self._clock = clock
        self._metrics = metrics
        self._backoff = backoff
        self._ok = True
        self._error: str | None = None
        self._errors = 0
        self._retry_at: float | None = None
        self._last_apply_at: float | None = None
        self._last_pass_at: float | None = None
        self._last_reason: str | None = None
        self._last_actions: list[str] = []
        self._applies = 0
        self._drift_repairs = 0
        self._passes = 0
        self._pass_done = asyncio.Event()

    @property
    def retry_at(self) -> float | None:
        """When the pending error's retry is due (clock time); None without an error."""
        return self._retry_at

    @property
    def last_pass_at(self) -> float | None:
        return self._last_pass_at

    def resync(self) -> None:
        """A periodic resync pass begins."""
        if self._metrics is not None:
            self._metrics.resyncs.inc()

    def foreign(self, reason: str, changes: int) -> None:
        """Someone else changed the kernel table: a full pass is asked for now."""
        if self._metrics is not None:
            self._metrics.foreign_changes.inc(changes)
        log.warning(
            "dataplane.foreign_change", reason=reason, changes=changes, repair="full pass now"
        )

    def succeeded(self, reason: str) -> None:
        """A pass succeeded: any pending error is over."""
        if self._errors:
            log.info("dataplane.recovered", reason=reason, after_errors=self._errors)
        self._ok, self._error, self._errors, self._retry_at = True, None, 0, None

    def failed(self, reason: str, text: str) -> None:
        """A pass failed with ``text``: count it and set the next retry on the backoff."""
        self._errors += 1
        lo, hi = self._backoff
        delay = min(hi, lo * 2 ** (self._errors - 1))
        self._retry_at = self._clock() + delay
        self._ok, self._error = False, text
        if self._metrics is not None:
            self._metrics.apply_errors.inc()
            self._metrics.applies.labels(result="error").inc()
        log.error(
            "dataplane.error",
            reason=reason,
            error=text,
            kind=self.kind,
            consecutive=self._errors,
            retry_in=delay,
        )

    def applied(
        self,
        reason: str,
        actions: Sequence[Action],
        texts: list[str],
        drift: list[str],
        duration: float,
        scope: str,
        parts: int,
    ) -> None:
        """A pass changed the kernel with ``actions`` (``texts``: their first descriptions)."""
        ops: dict[str, int] = {}
        for a in actions:
            ops[a.op] = ops.get(a.op, 0) + 1
        self._applies += 1
        self._last_apply_at = self._clock()
        self._last_actions = texts
        if drift:
            self._drift_repairs += 1
        if self._metrics is not None:
            self._metrics.applies.labels(result="ok").inc()
            self._metrics.apply_latency.observe(duration)
            for op, n in ops.items():
                self._metrics.actions.labels(op=op).inc(n)
            if drift:
                self._metrics.drift_repairs.inc()
        log.info(
            "dataplane.apply",
            reason=reason,
            kind=self.kind,
            scope=scope,
            actions=len(actions),
            batches=parts,
            ops=ops,
            duration=round(duration, 6),
            changes=texts[:20],
        )

    def table(self, services: int, dests: int) -> None:
        """The size of the owned part of the kernel table after a pass."""
        if self._metrics is not None:
            self._metrics.table_services.set(services)
            self._metrics.table_dests.set(dests)

    def pass_done(self, reason: str) -> None:
        """A pass ended (whatever its outcome)."""
        self._passes += 1
        self._last_pass_at = self._clock()
        self._last_reason = reason
        self._pass_done.set()

    async def wait_passes(self, count: int) -> None:
        """Wait until at least ``count`` passes ran in total (tests wrap it in a timeout)."""
        while self._passes < count:
            self._pass_done.clear()
            await self._pass_done.wait()

    def status(self, owned: int) -> ReconcileStatus:
        now = self._clock()
        retry = None if self._retry_at is None else max(0.0, self._retry_at - now)
        return ReconcileStatus(
            kind=self.kind,
            last_apply_at=self._last_apply_at,
            ok=self._ok,
            error=self._error,
            consecutive_errors=self._errors,
            next_retry_in=retry,
            last_actions=list(self._last_actions),
            applies=self._applies,
            drift_repairs=self._drift_repairs,
            passes=self._passes,
            last_pass_at=self._last_pass_at,
            last_reason=self._last_reason,
            owned=owned,
        )
