"""The one rise/fall hysteresis (pure, no I/O): ``Hysteresis`` turns single pass/fail results
into a state, and ``Tracker`` keeps a health-checked target's state and last result with it.
The gateway tracking of the HA pair (hacontrol.ha.track.FallCounter) uses the same counter.
A probe is one attempt; all hysteresis lives here. A target starts UNKNOWN and is not in the
table until it first passes:

    UNKNOWN --first success-------------> UP
    UNKNOWN --``fall`` consecutive fails--> DOWN
    UP      --``fall`` consecutive fails--> DOWN
    DOWN    --``rise`` consecutive passes-> UP

Counters are consecutive runs: a success zeroes ``failures`` and a failure zeroes ``successes``;
they keep counting across a transition (after UP -> DOWN with fall=3, ``failures`` is 3).
``reconfigure`` changes rise/fall and keeps state and counters; the new thresholds apply from the
next observation (a reconfigure never changes state by itself). Time is passed in (``now``,
monotonic seconds); nothing here reads a clock.
"""

from __future__ import annotations

from hacontrol.health.state import Health, ProbeResult, TargetStatus

__all__ = ["Hysteresis", "Tracker", "check_thresholds"]


def check_thresholds(rise: int, fall: int) -> None:
    """ValueError unless rise and fall are integers >= 1 (what ``Hysteresis`` accepts)."""
    if isinstance(rise, bool) or not isinstance(rise, int) or rise < 1:
        raise ValueError(f"rise must be an integer >= 1, got {rise!r}")
    if isinstance(fall, bool) or not isinstance(fall, int) or fall < 1:
        raise ValueError(f"fall must be an integer >= 1, got {fall!r}")


class Hysteresis:
    """Consecutive passes and fails -> UP / DOWN (the diagram in the module doc)."""

    __slots__ = ("failures", "fall", "rise", "state", "successes")

    def __init__(self, rise: int, fall: int) -> None:
        check_thresholds(rise, fall)
        self.rise, self.fall = rise, fall
        self.state = Health.UNKNOWN
        self.successes = self.failures = 0

    def observe(self, ok: bool) -> Health | None:
        """Count one result; return the new state if it changed, else None."""
        state = self.state
        if ok:
            self.successes += 1
            self.failures = 0
            if state is Health.UP:
                return None
            if state is not Health.UNKNOWN and self.successes < self.rise:
                return None
            self.state = Health.UP
            return Health.UP
        self.failures += 1
        self.successes = 0
        if state is Health.DOWN or self.failures < self.fall:
            return None
        self.state = Health.DOWN
        return Health.DOWN

    def reconfigure(self, rise: int, fall: int) -> None:
        """New thresholds from the next result on; state and counters are kept."""
        check_thresholds(rise, fall)
        self.rise, self.fall = rise, fall


class Tracker:
    """Health of one target from its stream of probe results."""

    __slots__ = (
        "_count",
        "_last_at",
        "_last_latency",
        "_last_ok",
        "_last_reason",
        "_since",
    )

    def __init__(self, rise: int, fall: int, now: float) -> None:
        self._count = Hysteresis(rise, fall)
        self._since = now
        self._last_ok: bool | None = None
        self._last_reason = "not checked yet"
        self._last_at: float | None = None
        self._last_latency: float | None = None

    @property
    def state(self) -> Health:
        return self._count.state

    @property
    def rise(self) -> int:
        return self._count.rise

    @property
    def fall(self) -> int:
        return self._count.fall

    def observe(self, result: ProbeResult, now: float) -> Health | None:
        """Record one probe result; return the new state if it changed, else None."""
        return self.record(result.ok, result.reason, result.latency, now)

    def record(self, ok: bool, reason: str, latency: float, now: float) -> Health | None:
        """``observe`` without building a ProbeResult (the scheduler's hot path)."""
        self._last_ok = ok
        self._last_reason = reason
        self._last_at = now
        self._last_latency = latency
        new = self._count.observe(ok)
        if new is not None:
            self._since = now
        return new

    def force(self, state: Health, reason: str, now: float) -> Health | None:
        """Set the state directly (check type "none": always UP). Returns it if it changed."""
        self._last_reason = reason
        if state is self._count.state:
            return None
        self._count.state = state
        self._since = now
        return state

    def reconfigure(self, rise: int, fall: int) -> None:
        """New thresholds; state and counters are kept."""
        self._count.reconfigure(rise, fall)

    def status(self) -> TargetStatus:
        c = self._count
        return TargetStatus(
            state=c.state,
            since=self._since,
            last_ok=self._last_ok,
            last_reason=self._last_reason,
            last_at=self._last_at,
            last_latency=self._last_latency,
            successes=c.successes,
            failures=c.failures,
        )
