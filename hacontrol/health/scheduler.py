"""The health checker: schedules probes for every target, applies rise/fall, reports changes.

The daemon's API (``HealthChecker``; ``CheckKey``, ``check_key`` re-exported from health/keys.py).
Targets are deduplicated by ``CheckKey``: identical checks of the same address and port run
once, whatever the number of services sharing them. Cheap at scale (docs/benchmarks.md):

* one timer: each tick (at most every ``TICK``) launches the slice of targets that are due (a
  timer wheel of ``TICK``-wide slots) and sweeps deadlines once (one launch-ordered deque per
  timeout value, so each is also deadline-ordered); no Task, no ``wait_for``, no timer and no
  loop handle per check (probe sockets share one epoll set, ``tcp.Poller``);
* first probes are spread uniformly over the interval, and every period gets +/- jitter;
* results go straight into the pure ``Tracker`` (hysteresis lives there only);
* a state change is logged (``health.change``), counted, and passed to ``on_change``.

``set_targets`` is the reload (``update`` with only its delta, the daemon's way: the work is
the change's, not the table's): new keys start UNKNOWN, gone keys are dropped (their probe in
flight is aborted), kept keys keep their tracker. A key whose check differs only in rise, fall,
interval, timeout or jitter is the same probe re-timed: it keeps its state (``reconfigure``).

One clock: "now" comes from ``clock`` and the timer runs on the loop (``call_later``), so
``clock`` must be the loop's own; by default it is (bound at ``start``).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.health.keys import CheckKey, OnChange, check_key, identity, make_probe, validate
from hacontrol.health.state import Health, TargetStatus
from hacontrol.health.tcp import Poller, Probe
from hacontrol.health.tracker import Tracker, check_thresholds
from hacontrol.metrics import Metrics
from hacontrol.model import CheckConfig

__all__ = ["CheckKey", "HealthChecker", "OnChange", "check_key", "make_probe"]

TICK = 0.01  # seconds between scheduler ticks at most 100 a second
# at most this many launches per tick: after a stall (or a first start of many targets with a
# short interval) the overdue rest goes out over the next ticks, with I/O handled in between,
# instead of one burst that stalls the loop further (10x the normal 10,000/s slice)
MAX_LAUNCH_PER_TICK = 1000


class _Target:
    __slots__ = ("alive", "checker", "done", "due", "gen", "inflight", "interval", "jitter",
                 "key", "kind", "probe", "started", "timeout", "timeout_reason", "tracker")

    def __init__(
        self, checker: HealthChecker, key: CheckKey, probe: Probe | None, now: float
    ) -> None:
        c = key.check
        self.checker = checker
        self.key = key
        self.kind: str = c.type
        self.probe = probe
        self.tracker = Tracker(c.rise, c.fall, now)
        self.alive = True
        self.inflight = False
        self.gen = 0
        self.due = -1  # the wheel slot it waits in, -1 for none
        self.started = 0.0
        self.done = self._done  # one bound method for every probe attempt
        self.retime(c)

    def retime(self, c: CheckConfig) -> None:
        self.interval, self.timeout, self.jitter = c.interval, c.timeout, c.jitter
        self.timeout_reason = f"timeout after {c.timeout:g}s"

    def _done(self, ok: bool, reason: str) -> None:
        if self.inflight:
            self.inflight = False
            self.checker.complete(self, ok, reason)


class HealthChecker:
    def __init__(
        self,
        clock: Clock | None = None,
        on_change: OnChange | None = None,
        metrics: Metrics | None = None,
        *,
        log_changes: bool = True,
    ) -> None:
        """``log_changes=False``: the owner of ``on_change`` logs ``health.change`` itself with
        more context (the daemon adds the services), so each change is logged once."""
        self._log_changes = log_changes
        self._clock_given = clock is not None
        self._clock: Clock = clock if clock is not None else time.monotonic
        self._on_change = on_change
        self._metrics = metrics
        self._targets: dict[CheckKey, _Target] = {}
        # timer wheel: slot k holds the targets due in ((k-1)*TICK, k*TICK]; a heap of the
        # slot numbers in use gives the next one (O(1) per check instead of a heap per target)
        self._slots: dict[int, list[_Target]] = {}
        self._slot_keys: list[int] = []
        self._current = -1  # the last slot launched
        self._deadlines: dict[float, deque[tuple[float, _Target, int]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: Poller | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = math.inf
        self._last_tick = -math.inf
        self._rand = random.Random()
        self._counts = dict.fromkeys(Health, 0)
        self._pending: dict[tuple[str, bool], int] = {}  # check counts not yet in metrics
        self._latency: Any = metrics.check_latency if metrics is not None else None
        self._random = self._rand.random
        self._gauge_dirty = False
        self._log = logs.get("health")  # bound here: logs.configure() may run after import
        self.checks_run = 0  # probes completed (incl. timeouts), for benchmarks and status

    # ---- targets -------------------------------------------------------------------------

    def set_targets(self, keys: Iterable[CheckKey]) -> None:
        """Make the checked set equal ``keys``; validates everything before changing anything."""
        wanted = dict.fromkeys(keys)
        self.update([k for k in wanted if k not in self._targets],
                    [k for k in self._targets if k not in wanted])  # fmt: skip

    def update(self, add: Iterable[CheckKey], remove: Iterable[CheckKey]) -> None:
        """Check ``add`` too and ``remove`` no more (a reload's delta: the work is the delta's,
        not the table's); validates everything before changing anything."""
        old, adding = self._targets, dict.fromkeys(add)
        gone = {identity(k): old[k] for k in dict.fromkeys(remove) if k in old and k not in adding}
        now = self._clock()
        new: dict[CheckKey, _Target] = {}
        carried: list[tuple[_Target, CheckKey]] = []
        fresh: list[_Target] = []
        for key in adding:
            if not isinstance(key, CheckKey):
                raise TypeError(f"not a CheckKey: {key!r}")
            validate(key.check)
            if key in old:
                continue
            t = gone.pop(identity(key), None)
            if t is not None:
                check_thresholds(key.check.rise, key.check.fall)
                carried.append((t, key))
            else:
                t = _Target(self, key, make_probe(key), now)
                fresh.append(t)
            new[key] = t
        # commit: nothing below raises on bad input
        for t in gone.values():
            self._drop(t)
            del old[t.key]
        for t, key in carried:
            del old[t.key]
            t.key = key
            t.tracker.reconfigure(key.check.rise, key.check.fall)
            t.retime(key.check)
        old.update(new)
        for t in fresh:
            self._counts[Health.UNKNOWN] += 1
            if t.probe is None:
                change = t.tracker.force(Health.UP, "no check (type none)", now)
                if change is not None:
                    self._changed(t, Health.UNKNOWN, change, "no check (type none)")
            elif self._loop is not None:
                self._schedule(t, now + self._rand.uniform(0, t.interval), now)
        self._set_gauge()

    def _drop(self, t: _Target) -> None:
        t.alive = False
        if t.inflight and t.probe is not None:
            t.inflight = False
            t.probe.cancel()
        self._counts[t.tracker.state] -= 1

    def keys(self) -> list[CheckKey]:
        return list(self._targets)

    def state(self, key: CheckKey) -> Health:
        return self._get(key).tracker.state

    def status(self, key: CheckKey) -> TargetStatus:
        return self._get(key).tracker.status()

    def snapshot(self) -> dict[CheckKey, TargetStatus]:
        return {k: t.tracker.status() for k, t in self._targets.items()}

    def _get(self, key: CheckKey) -> _Target:
        try:
            return self._targets[key]
        except KeyError:
            raise KeyError(f"not a checked target: {key.target} ({key.check.type})") from None

    # ---- running -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        if not self._clock_given:  # the loop's clock (asyncio's stock loop: time.monotonic)
            stock = type(loop).time is asyncio.BaseEventLoop.time
            self._clock = time.monotonic if stock else loop.time
        self._poller = Poller(self._loop)
        now = self._clock()
        self._last_tick = -math.inf
        for t in self._targets.values():
            if t.probe is not None:
                self._schedule(t, now + self._rand.uniform(0, t.interval), now)

    async def stop(self) -> None:
        """Cancel everything: abort sockets, kill exec children; returns within a second."""
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_at = math.inf
        self._loop = None
        tasks: list[asyncio.Task[Any]] = []
        for t in self._targets.values():
            t.due = -1
            if t.inflight and t.probe is not None:
                task = t.probe.task  # https/exec: a Task while connecting
                if task is not None:
                    tasks.append(task)
                t.inflight = False
                t.probe.cancel()
        self._slots.clear()
        self._slot_keys.clear()
        self._deadlines.clear()
        self._flush_metrics()
        if self._poller is not None:
            self._poller.close()
            self._poller = None
        if tasks:  # let cancelled https/exec tasks unwind (exec: reap the killed child)
            await asyncio.wait(tasks, timeout=0.5)

    def _arm(self, when: float) -> None:
        if when >= self._wake_at or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = when
        self._timer = self._loop.call_later(max(0.0, when - self._clock()), self._tick)

    def _schedule(self, t: _Target, due: float, now: float) -> None:
        k = int((due if due > now else now) / TICK) + 1  # launched by the tick at k * TICK
        if k <= self._current:  # never into a slot the running tick is (or was) launching
            k = self._current + 1
        t.due = k
        slot = self._slots.get(k)
        if slot is None:
            slot = self._slots[k] = []
            heapq.heappush(self._slot_keys, k)
            when = k * TICK
            if when < self._wake_at:
                self._arm(max(when, self._last_tick + TICK))
        slot.append(t)

    def _tick(self) -> None:
        self._flush_metrics()
        self._timer = None
        self._wake_at = math.inf
        now = self._last_tick = self._clock()
        for dq in self._deadlines.values():
            while dq and dq[0][0] <= now:
                _, t, gen = dq.popleft()
                if t.inflight and t.gen == gen:
                    self._timeout(t, now)
        launched = 0
        poller = self._poller
        keys, slots = self._slot_keys, self._slots
        current = self._current = int(now / TICK + 0.1)  # a timer may fire a hair early
        while keys and keys[0] <= current and launched < MAX_LAUNCH_PER_TICK:
            k = keys[0]
            slot = slots[k]
            i = 0
            for i, t in enumerate(slot, 1):  # noqa: B007 (used after: where to resume)
                if not t.alive or t.inflight or t.due != k:
                    continue
                launched += 1
                self._launch(t, now, poller)  # type: ignore[arg-type]
                if launched >= MAX_LAUNCH_PER_TICK:
                    break
            if i < len(slot):
                del slot[:i]  # a burst larger than a tick's share: the rest next tick
            else:
                del slots[k]
                heapq.heappop(keys)
        if self._loop is None:
            return
        if launched and poller is not None:
            poller.dispatch()
        nxt = keys[0] * TICK if keys else math.inf
        for dq in self._deadlines.values():
            if dq and dq[0][0] < nxt:
                nxt = dq[0][0]
        if launched >= MAX_LAUNCH_PER_TICK:
            self._arm(now)
        elif nxt < math.inf:
            self._arm(max(nxt, now + TICK))

    def _launch(self, t: _Target, now: float, poller: Poller) -> None:
        t.due = -1
        t.gen += 1
        t.inflight = True
        t.started = now
        line = self._deadlines.get(t.timeout)
        if line is None:
            line = self._deadlines[t.timeout] = deque()
        line.append((now + t.timeout, t, t.gen))
        try:
            t.probe.start(poller, t.done)  # type: ignore[union-attr]
        except Exception as e:  # a probe bug must not stop the scheduler
            self._log.error(
                "health.probe_error",
                target=t.key.target,
                check=t.kind,
                reason=f"{type(e).__name__}: {e}",
            )
            t.done(False, f"probe error: {type(e).__name__}")

    def _timeout(self, t: _Target, now: float) -> None:
        phase = t.probe.cancel() if t.probe is not None else ""
        t.inflight = False
        self.complete(t, False, f"{t.timeout_reason} ({phase})" if phase else t.timeout_reason)

    def complete(self, t: _Target, ok: bool, reason: str) -> None:
        """One probe result (the hot path: 10,000 a second at scale, so kept flat)."""
        now = self._clock()
        latency = now - t.started
        self.checks_run += 1
        tracker = t.tracker
        prev = tracker.state
        change = tracker.record(ok, reason, latency, now)
        if self._metrics is not None:
            pending = self._pending
            k = (t.kind, ok)
            pending[k] = pending.get(k, 0) + 1  # flushed to the counter once per tick
            self._latency.observe(latency)
        if change is not None and t.alive:
            self._changed(t, prev, change, reason)
        if t.alive and self._loop is not None:
            j = t.jitter
            due = t.started + (
                t.interval * (1.0 + j * (2.0 * self._random() - 1.0)) if j else t.interval
            )
            if due < now:
                due = now
            self._schedule(t, due, now)

    def _flush_metrics(self) -> None:
        m = self._metrics
        if m is None:
            return
        for (kind, ok), n in self._pending.items():
            m.checks.labels(kind, "ok" if ok else "fail").inc(n)
        self._pending.clear()
        if self._gauge_dirty:
            self._set_gauge()

    def _changed(self, t: _Target, prev: Health, new: Health, reason: str) -> None:
        self._counts[prev] -= 1
        self._counts[new] += 1
        st = t.tracker.status()
        if self._log_changes:
            self._log.info(
                "health.change",
                target=t.key.target,
                check=t.kind,
                reason=reason,
                successes=st.successes,
                failures=st.failures,
                **{"from": prev.value, "to": new.value},
            )
        if self._metrics is not None:
            self._metrics.health_changes.labels(new.value).inc()
            self._gauge_dirty = True  # set once per tick, not once per change
        if self._on_change is not None:
            try:
                self._on_change(t.key, new, st)
            except Exception as e:
                self._log.error(
                    "health.on_change_error", target=t.key.target, reason=f"{type(e).__name__}: {e}"
                )

    def _set_gauge(self) -> None:
        self._gauge_dirty = False
        if self._metrics is not None:
            for state, n in self._counts.items():
                self._metrics.targets.labels(state.value).set(n)
