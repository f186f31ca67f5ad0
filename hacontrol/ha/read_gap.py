"""Heartbeat read gaps: how long this node went between two heartbeats it *read* on one path.

The periodic heartbeats leave from a sender process (hacontrol.ha.beat_proc), but they are read on
the daemon's event loop (hacontrol.ha.transport): a hold of that loop (a ``loop.stall``) delays the
reading of the peer's heartbeats, queued meanwhile in the socket. ``ReadGaps`` measures that, per
peer path, from the times (the injected monotonic clock) at which accepted heartbeats (types
HEARTBEAT and HANDOVER that reached the role machine; not overrides, not dropped packets) were
read. Pure: no clock of its own, no I/O.

A gap is the time between two consecutive accepted reads on one path; its lateness is the gap
minus the heartbeat interval; a read is *late* when its lateness exceeds half an interval. A gap
measured here includes the peer's own sending jitter (and the network's), not only our reading.

What is not a gap (the next read starts afresh): the first read on a path since start; the first
read after a tick of the running loop (``watch``) found the path silent past the peer's dead
interval (the peer died, was partitioned away or failed over: the loop was awake and saw it, so the
silence is no read gap); the first read of a new peer boot epoch (the peer restarted). A loop held
past the dead interval runs no tick meanwhile, and the event loop reads the queued datagrams before
it runs the timers that fell due: that hold is measured as one gap.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gap:
    """One gap between two accepted reads on ``path`` (seconds)."""

    path: str
    gap: float
    lateness: float  # gap - interval (negative: earlier than the interval)
    late: bool  # lateness > interval / 2


@dataclass
class PathReads:
    """One path's reads: the last one (None: the next read starts afresh) and the worst gap."""

    last: float | None = None
    epoch: int | None = None
    gaps: int = 0  # gaps measured
    late: int = 0  # of which late
    max_gap: float = 0.0


class ReadGaps:
    """Per-path read gaps against ``interval``; a path silent past ``dead_interval`` at a
    ``watch`` starts afresh."""

    def __init__(self, interval: float, dead_interval: float) -> None:
        if interval <= 0 or dead_interval < interval:
            raise ValueError(f"interval {interval} and dead interval {dead_interval}")
        self.interval, self.dead_interval = interval, dead_interval
        self.paths: dict[str, PathReads] = {}

    def read(self, path: str, now: float, epoch: int) -> Gap | None:
        """An accepted heartbeat read on ``path`` at ``now`` from the peer's boot ``epoch``; the
        gap since the previous one (None: nothing to measure against, see the module)."""
        pr = self.paths.setdefault(path, PathReads())
        last, pr.last = pr.last, now
        same_boot, pr.epoch = pr.epoch == epoch, epoch
        if last is None or not same_boot:
            return None
        gap = max(0.0, now - last)
        lateness = gap - self.interval
        late = lateness > self.interval / 2
        pr.gaps += 1
        pr.late += late
        pr.max_gap = max(pr.max_gap, gap)
        return Gap(path, gap, lateness, late)

    def watch(self, now: float) -> list[str]:
        """A tick of the running loop at ``now``: every path silent longer than the dead
        interval starts afresh (its next read is no gap). The paths reset."""
        reset = []
        for path, pr in self.paths.items():
            if pr.last is not None and now - pr.last > self.dead_interval:
                pr.last = None
                reset.append(path)
        return reset

    def status(self) -> dict[str, dict[str, float | int]]:
        """Per path: ``max`` (largest gap, s), ``late_max`` (its lateness, never below 0),
        ``gaps`` (measured) and ``late`` (of which late by over half an interval)."""
        return {
            path: {"max": round(pr.max_gap, 4),
                   "late_max": round(max(0.0, pr.max_gap - self.interval), 4) if pr.gaps else 0.0,
                   "gaps": pr.gaps, "late": pr.late}
            for path, pr in sorted(self.paths.items())
        }  # fmt: skip
