"""The chaos soak's pure parts: the seeded fault schedule, attribution and the per-kind summary.

No I/O here (bench/chaos_soak.py runs the lab and imports this; tests/unit/test_chaos_schedule.py
tests it). ``schedule(seed, minutes)`` draws the faults: every kind in a shuffled bag, the bag
refilled when empty (so each kind recurs about equally often), each fault with its parameters
(which director or real server, how long it holds) and the quiet gap after it; the same seed
gives the same schedule. ``Window`` is one executed fault (from its start until the system
settled again, plus a tail for late detection); ``attribute`` maps an instant to the kind of the
window it falls in, else ``quiet``; ``overlap`` measures how long the directors held the VIP
zero or two times inside a window; ``summarize`` builds the table per kind.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

QUIET = "quiet"
# planned operations: the target is 0 failed requests for these
PLANNED = ("drain", "override", "reload_good", "reload_bad", "handover", "restart")
UNPLANNED = ("kill9", "stop_short", "stop_long", "partition", "rs_death", "rs_hang",
             "table_flush")  # fmt: skip
KINDS = PLANNED + UNPLANNED
REAL_SERVERS = ("rs1", "rs2", "rs3")
# a rough length of each kind (s, fault + settling) so the schedule fits the minutes asked for
NOMINAL = {"drain": 12.0, "override": 10.0, "reload_good": 6.0, "reload_bad": 5.0,
           "handover": 10.0, "restart": 12.0, "kill9": 12.0, "stop_short": 4.0,
           "stop_long": 10.0, "partition": 12.0, "rs_death": 10.0, "rs_hang": 10.0,
           "table_flush": 14.0}  # fmt: skip


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: its kind, parameters and the quiet gap that follows it."""

    index: int
    kind: str
    params: dict[str, Any] = field(hash=False)
    gap: float  # quiet seconds after the system settled

    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"#{self.index} {self.kind}({extra})"


def _params(kind: str, rng: random.Random) -> dict[str, Any]:
    if kind in ("drain", "override", "rs_death", "rs_hang"):
        p: dict[str, Any] = {"server": rng.choice(REAL_SERVERS),
                             "hold": round(rng.uniform(3.0, 6.0), 1)}  # fmt: skip
        if kind == "override":
            p["weight"] = rng.randint(2, 5)
        return p
    if kind == "reload_good":
        return {"server": rng.choice(REAL_SERVERS)}  # whose weight the new file flips
    if kind == "reload_bad":
        return {"flaw": rng.choice(("scheduler", "yaml", "port"))}
    if kind in ("restart", "kill9"):
        p = {"target": rng.choice(("active", "backup"))}
        if kind == "kill9":
            p["down"] = round(rng.uniform(1.0, 3.0), 1)
        return p
    if kind == "stop_short":  # under dead_after x interval (0.6 s in the soak)
        return {"target": "active", "hold": round(rng.uniform(0.1, 0.3), 2)}
    if kind == "stop_long":  # well over it
        hold = round(rng.uniform(1.5, 4.0), 1)
        return {"target": rng.choice(("active", "backup")), "hold": hold}
    if kind == "partition":
        hold = round(rng.uniform(2.0, 5.0), 1)
        return {"target": rng.choice(("active", "backup")), "hold": hold}
    if kind == "table_flush":
        return {"target": "active", "how": rng.choice(("flush", "delete"))}
    return {}  # handover


def schedule(
    seed: int, minutes: float, gap: tuple[float, float] = (4.0, 7.0), kinds: Sequence[str] = KINDS
) -> list[Fault]:
    """The faults of a soak of ``minutes`` (by their nominal lengths plus the gaps), drawn from
    ``kinds`` (unknown kinds are a ValueError). A longer soak with the same seed extends the
    shorter one's schedule (the runner asks for more than it needs and stops at its deadline)."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown fault kinds: {', '.join(unknown)} (known: {', '.join(KINDS)})")
    if minutes <= 0 or not kinds:
        return []
    rng = random.Random(seed)
    budget, used = minutes * 60.0, 0.0
    out: list[Fault] = []
    bag: list[str] = []
    while used < budget:
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        f = Fault(len(out), kind, _params(kind, rng), round(rng.uniform(*gap), 1))
        out.append(f)
        used += NOMINAL[kind] + f.gap
    return out


# ---------------------------------------------------------------- after the run


@dataclass(frozen=True)
class Window:
    """An executed fault: [start, end) on the monotonic clock, ``end`` including the tail."""

    start: float
    end: float
    kind: str
    index: int
    healed: float | None = None  # when the fault's action ended (None: = start)


def attribute(t: float, windows: Sequence[Window]) -> tuple[str, int | None]:
    """The kind (and fault index) of the window holding instant ``t``, else (QUIET, None).

    ``windows`` sorted by start and not overlapping (the runner executes one fault at a time)."""
    i = bisect.bisect_right([w.start for w in windows], t) - 1
    if i >= 0 and t < windows[i].end:
        return windows[i].kind, windows[i].index
    return QUIET, None


def overlap(spans: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of the spans that fall within [start, end)."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


def _gaps(windows: Sequence[Window], span: tuple[float, float]) -> list[tuple[float, float]]:
    """The parts of ``span`` outside every window."""
    out, at = [], span[0]
    for w in windows:
        if w.start > at:
            out.append((at, min(w.start, span[1])))
        at = max(at, w.end)
    if at < span[1]:
        out.append((at, span[1]))
    return out


def count_spans(
    samples: Sequence[tuple[float, int]], end: float
) -> dict[int, list[tuple[float, float]]]:
    """From (time, holder count) changes, sorted: the spans with each count, until ``end``."""
    out: dict[int, list[tuple[float, float]]] = {}
    for (t, n), nxt in zip(samples, [*[s[0] for s in samples[1:]], end], strict=True):
        if nxt > t:
            out.setdefault(n, []).append((t, nxt))
    return out


def role_counts(events: Iterable[tuple[float, str, str]], nodes: Sequence[str]
                ) -> list[tuple[float, int]]:  # fmt: skip
    """From (time, node, role) events (a daemon's ``ha.transition`` to a role, or ``dead`` when
    it was killed): (time, number of nodes whose last role is ``active``) at every change, from
    when every node had one."""
    state: dict[str, str] = {}
    out: list[tuple[float, int]] = []
    for t, node, role in sorted(events):
        state[node] = role
        if len(state) == len(nodes):
            n = sum(1 for r in state.values() if r == "active")
            if not out or out[-1][1] != n:
                out.append((t, n))
    return out


def longest(spans: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """The longest single span clipped to [start, end)."""
    return max((max(0.0, min(b, end) - max(a, start)) for a, b in spans), default=0.0)


@dataclass
class Row:
    kind: str
    count: int = 0
    seconds: float = 0.0
    sent: int = 0
    failed: int = 0
    long_broken: int = 0
    long_open_failed: int = 0
    no_active: float = 0.0
    two_active: float = 0.0
    two_active_max: float = 0.0
    two_after_heal: float = 0.0  # the longest two-holder stretch after the fault ended
    log_no_active: float = 0.0  # the same two measures from the daemons' own transitions
    log_two_active: float = 0.0
    transitions: int = 0  # ha.transition lines of both daemons
    stalls: int = 0  # ha.stall lines: a daemon's loop held past the dead interval (the host)

    @property
    def planned(self) -> bool:
        return self.kind in PLANNED


def summarize(
    windows: Sequence[Window],
    requests: Iterable[tuple[float, bool]],  # (end time, ok)
    long_events: Iterable[tuple[float, str]],  # (time, "broken" | "open_failed")
    holder_spans: dict[int, list[tuple[float, float]]],
    span: tuple[float, float],  # the whole soak
    role_spans: dict[int, list[tuple[float, float]]] | None = None,
    log_events: Iterable[tuple[float, str]] = (),  # (time, "transition" | "stall")
) -> dict[str, Row]:
    """One row per fault kind that ran, one for QUIET (between faults) and ``total``.

    ``holder_spans``: spans per number of directors holding the VIP (the kernel's view);
    ``role_spans``: the same per number of daemons saying they are active (their logs)."""
    rows = {w.kind: Row(w.kind) for w in windows}
    rows[QUIET], rows["total"] = Row(QUIET), Row("total")
    roles = role_spans or {}
    zero, two = holder_spans.get(0, []), holder_spans.get(2, [])
    for w in windows:
        r = rows[w.kind]
        r.count += 1
        r.seconds += w.end - w.start
        r.no_active += overlap(zero, w.start, w.end)
        r.two_active += overlap(two, w.start, w.end)
        r.two_active_max = max(r.two_active_max, longest(two, w.start, w.end))
        healed = w.start if w.healed is None else w.healed
        r.two_after_heal = max(r.two_after_heal, longest(two, healed, w.end))
        r.log_no_active += overlap(roles.get(0, []), w.start, w.end)
        r.log_two_active += overlap(roles.get(2, []), w.start, w.end)
    q, tot = rows[QUIET], rows["total"]
    tot.seconds = span[1] - span[0]
    tot.no_active, tot.two_active = overlap(zero, *span), overlap(two, *span)
    tot.two_active_max = longest(two, *span)
    tot.two_after_heal = max((r.two_after_heal for r in rows.values()), default=0.0)
    tot.log_no_active = overlap(roles.get(0, []), *span)
    tot.log_two_active = overlap(roles.get(2, []), *span)
    faults = [r for k, r in rows.items() if k not in (QUIET, "total")]
    q.seconds = tot.seconds - sum(w.end - w.start for w in windows)
    q.no_active = tot.no_active - sum(r.no_active for r in faults)
    q.two_active = tot.two_active - sum(r.two_active for r in faults)
    q.log_no_active = tot.log_no_active - sum(r.log_no_active for r in faults)
    q.log_two_active = tot.log_two_active - sum(r.log_two_active for r in faults)
    quiet_windows = _gaps(windows, span)
    q.two_active_max = max((longest(two, a, b) for a, b in quiet_windows), default=0.0)
    q.two_after_heal = q.two_active_max
    for t, ok in requests:
        if not span[0] <= t < span[1]:
            continue
        r = rows[attribute(t, windows)[0]]
        for x in (r, tot):
            x.sent += 1
            x.failed += 0 if ok else 1
    for t, what in [*long_events, *log_events]:
        if not span[0] <= t < span[1]:
            continue
        r = rows[attribute(t, windows)[0]]
        for x in (r, tot):
            if what == "broken":
                x.long_broken += 1
            elif what == "open_failed":
                x.long_open_failed += 1
            elif what == "transition":
                x.transitions += 1
            elif what == "stall":
                x.stalls += 1
    return rows
