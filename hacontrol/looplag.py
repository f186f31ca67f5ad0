"""How late the event loop runs: the daemon's loop-lag monitor (``hacontrol_loop_lag_*``).

Everything time-critical runs on one event loop: the heartbeat is sent from it, the checks are
timed on it. Any work that holds the loop (a big parse, a slice of a diff, a JSON dump of the
status) delays them by as long. ``LoopLag`` arms a timer every ``period`` and measures how much
later than asked it runs: that lateness is the delay a heartbeat due at the same moment would
have had. It keeps the largest since start (``max``, the gauge
``hacontrol_loop_lag_max_seconds``) and the last one, observes each in the histogram
``hacontrol_loop_lag_seconds`` (the stalls of a window: the difference of two scrapes), and logs
``loop.stall`` (with the lag, the loop thread's CPU time meanwhile, which tells our own work
from a host that did not run us, and a reason) when one exceeds ``warn_after``. One timer handle and
a subtraction per period: no task, no thread. Started by ``Daemon.run`` (the real process),
not under a virtual-time loop.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Gauge, Histogram

from hacontrol import logs

log = logs.get("hacontrol.looplag")

PERIOD = 0.02  # seconds between two measurements
WARN_AFTER = 0.1  # log a stall longer than this (half the default heartbeat interval)


class LoopLag:
    def __init__(
        self,
        gauge: Gauge | None = None,
        histogram: Histogram | None = None,
        period: float = PERIOD,
        warn_after: float = WARN_AFTER,
    ) -> None:
        if period <= 0 or warn_after <= 0:
            raise ValueError("period and warn_after must be positive")
        self._gauge = gauge
        self._hist = histogram
        self.period = period
        self.warn_after = warn_after
        self.max = 0.0  # the largest lateness since start, seconds
        self.last = 0.0
        self.samples = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu = 0.0  # the loop thread's CPU time at the last tick

    def start(self) -> None:
        """Start measuring on the running loop (idempotent)."""
        if self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._cpu = time.thread_time()
        self._arm(self._loop.time())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.period
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        lag = max(0.0, now - self._due)
        cpu = time.thread_time()
        self.record(lag, cpu - self._cpu)
        self._cpu = cpu
        self._arm(now)

    def record(self, lag: float, cpu: float | None = None) -> None:
        """One measurement (the timer's; tests feed it directly); ``cpu``: the CPU time the
        loop's thread used since the previous one (near the lag: our own work held the loop;
        far below: the host did not run us)."""
        self.samples += 1
        self.last = lag
        if self._hist is not None:
            self._hist.observe(lag)
        if lag > self.max:
            self.max = lag
            if self._gauge is not None:
                self._gauge.set(lag)
        if lag > self.warn_after:
            log.warning(
                "loop.stall",
                lag_ms=round(lag * 1000, 1),
                max_ms=round(self.max * 1000, 1),
                cpu_ms=None if cpu is None else round(cpu * 1000, 1),
                reason="the event loop was held: heartbeats and checks due meanwhile were late",
            )
