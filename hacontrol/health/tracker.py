"""The rise/fall tracker: turns single probe results into a target's health (pure, no I/O).

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

__all__ = ["Tracker", "check_thresholds"]


def check_thresholds(rise: int, fall: int) -> None:
    """ValueError unless rise and fall are integers >= 1 (what ``Tracker`` accepts)."""
    if isinstance(rise, bool) or not isinstance(rise, int) or rise < 1:
        raise ValueError(f"rise must be an integer >= 1, got {rise!r}")
    if isinstance(fall, bool) or not isinstance(fall, int) or fall < 1:
        raise ValueError(f"fall must be an integer >= 1, got {fall!r}")


class Tracker:
    """Health of one target from its stream of probe results."""

    __slots__ = (
        "_failures",
        "_fall",
        "_last_at",
        "_last_latency",
        "_last_ok",
        "_last_reason",
        "_rise",
        "_since",
        "_state",
        "_successes",
    )

    def __init__(self, rise: int, fall: int, now: float) -> None:
        check_thresholds(rise, fall)
        self._rise = rise
        self._fall = fall
        self._state = Health.UNKNOWN
        self._since = now
        self._last_ok: bool | None = None
        self._last_reason = "not checked yet"
        self._last_at: float | None = None
        self._last_latency: float | None = None
        self._successes = 0
        self._failures = 0

    @property
    def state(self) -> Health:
        return self._state

    @property
    def rise(self) -> int:
        return self._rise

    @property
    def fall(self) -> int:
        return self._fall

    def observe(self, result: ProbeResult, now: float) -> Health | None:
        """Record one probe result; return the new state if it changed, else None."""
        return self.record(result.ok, result.reason, result.latency, now)

    def record(self, ok: bool, reason: str, latency: float, now: float) -> Health | None:
        """``observe`` without building a ProbeResult (the scheduler's hot path)."""
        self._last_ok = ok
        self._last_reason = reason
        self._last_at = now
        self._last_latency = latency
        state = self._state
        if ok:
            self._successes += 1
            self._failures = 0
            if state is Health.UP:
                return None
            if state is Health.UNKNOWN or self._successes >= self._rise:
                new = Health.UP
            else:
                return None
        else:
            self._failures += 1
            self._successes = 0
            if state is Health.DOWN or self._failures < self._fall:
                return None
            new = Health.DOWN
        self._state = new
        self._since = now
        return new

    def force(self, state: Health, reason: str, now: float) -> Health | None:
        """Set the state directly (check type "none": always UP). Returns it if it changed."""
        self._last_reason = reason
        if state is self._state:
            return None
        self._state = state
        self._since = now
        return state

    def reconfigure(self, rise: int, fall: int) -> None:
        """New thresholds; state and counters are kept."""
        check_thresholds(rise, fall)
        self._rise = rise
        self._fall = fall

    def status(self) -> TargetStatus:
        return TargetStatus(
            state=self._state,
            since=self._since,
            last_ok=self._last_ok,
            last_reason=self._last_reason,
            last_at=self._last_at,
            last_latency=self._last_latency,
            successes=self._successes,
            failures=self._failures,
        )
