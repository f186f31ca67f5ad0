"""Health state of one checked target, as the tracker, status API and desired table see it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Health(StrEnum):
    UNKNOWN = "unknown"  # not yet passed a check: not in the table
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe attempt."""

    ok: bool
    reason: str  # e.g. "connected", "status 503", "timeout after 0.5s", "connection refused"
    latency: float  # seconds


@dataclass(frozen=True)
class TargetStatus:
    """Snapshot of one target for status/API. Times are monotonic seconds."""

    state: Health
    since: float
    last_ok: bool | None = None
    last_reason: str = "not checked yet"
    last_at: float | None = None
    last_latency: float | None = None
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
