"""The takeover timeline of this node: when it detected, took, announced and first said "active".

``TakeoverMarks`` owns the marks of the last takeover, on the runner's clock: ``detected`` (the
move to active), ``vip_added``, ``announced`` (the first step of each is kept), ``hb_active`` (the
first heartbeat as active) and ``released`` (the last release), plus the number of announcement
packets sent since. The heartbeat carries them as milliseconds ago (``takeover``), so the peer's
drills can draw the timeline; ``status`` shows them as seconds ago. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from hacontrol.ha import packet as pk

__all__ = ["TakeoverMarks", "ms_ago"]

STEPS = ("detected", "vip_added", "announced", "hb_active", "released")


def ms_ago(now: float, at: float | None) -> int:
    """Whole milliseconds from ``at`` to ``now`` for the wire (``NO_TIME`` when unknown)."""
    if at is None:
        return pk.NO_TIME
    return min(max(0, int((now - at) * 1000)), pk.NO_TIME - 1)


class TakeoverMarks:
    """The marks of the last takeover (see the module doc)."""

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._announced = 0

    def begin(self, now: float) -> None:
        """A new takeover: this node moved to active at ``now``; earlier marks are dropped."""
        self._at, self._announced = {"detected": now}, 0

    def first(self, step: str, now: float) -> None:
        """Mark ``step`` at ``now`` unless it is already marked (the first one counts)."""
        self._at.setdefault(step, now)

    def last(self, step: str, now: float) -> None:
        """Mark ``step`` at ``now``, replacing an earlier mark (the last one counts)."""
        self._at[step] = now

    def add_announced(self, packets: int) -> None:
        self._announced += packets

    def get(self, step: str) -> float | None:
        return self._at.get(step)

    def has(self, step: str) -> bool:
        return step in self._at

    @property
    def announce_count(self) -> int:
        return self._announced

    def ago(self, now: float) -> dict[str, float]:
        """Each mark as seconds before ``now`` (for status), in the order marked."""
        return {k: round(max(0.0, now - v), 3) for k, v in self._at.items()}

    def takeover(self, now: float) -> pk.Takeover:
        """The heartbeat's takeover block (send it only while active; else ``pk.Takeover()``)."""
        at = self._at
        return pk.Takeover(
            ms_ago(now, at.get("detected")),
            ms_ago(now, at.get("vip_added")),
            ms_ago(now, at.get("announced")),
            self._announced if at else 0,
        )
