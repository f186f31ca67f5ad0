"""The chaos soak's pure parts (bench/chaos_plan.py): the seeded schedule, attribution, summary.

The bench directory is not a package (its scripts import their siblings by name), so the module
is loaded from its file.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_plan", BENCH / "chaos_plan.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["chaos_plan"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


cp = _load()


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    a, b = cp.schedule(7, 10), cp.schedule(7, 10)
    assert [(f.kind, f.params, f.gap) for f in a] == [(f.kind, f.params, f.gap) for f in b]
    c = cp.schedule(8, 10)
    assert [(f.kind, f.params, f.gap) for f in a] != [(f.kind, f.params, f.gap) for f in c]


def test_a_longer_soak_extends_the_shorter_ones_schedule() -> None:
    short, long = cp.schedule(4, 3), cp.schedule(4, 10)
    assert len(long) > len(short)
    assert [f.label() for f in long[: len(short)]] == [f.label() for f in short]


def test_every_kind_recurs_about_equally_and_the_schedule_fits_the_minutes() -> None:
    faults = cp.schedule(1, 10)
    counts = Counter(f.kind for f in faults)
    assert set(counts) == set(cp.KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1  # a shuffled bag, refilled
    nominal = sum(cp.NOMINAL[f.kind] + f.gap for f in faults)
    assert 600 <= nominal < 600 + max(cp.NOMINAL.values()) + 7.0  # stops once the budget is used
    assert [f.index for f in faults] == list(range(len(faults)))
    assert all(4.0 <= f.gap <= 7.0 for f in faults)


def test_parameters_stay_in_their_ranges() -> None:
    for f in cp.schedule(3, 30):
        p = f.params
        if f.kind == "stop_short":
            assert p["hold"] < 0.6  # under the soak's dead interval (200 ms x 3)
        if f.kind == "stop_long":
            assert p["hold"] > 0.6
        if f.kind in ("drain", "override", "rs_death", "rs_hang"):
            assert p["server"] in cp.REAL_SERVERS
        if f.kind == "override":
            assert 2 <= p["weight"] <= 5
        if "target" in p:
            assert p["target"] in ("active", "backup")


def test_kinds_restrict_the_schedule_and_unknown_kinds_are_refused() -> None:
    faults = cp.schedule(2, 3, kinds=["drain", "handover"])
    assert {f.kind for f in faults} == {"drain", "handover"}
    with pytest.raises(ValueError, match="unknown fault kinds: nope"):
        cp.schedule(2, 3, kinds=["drain", "nope"])
    assert cp.schedule(2, 0) == []


def test_attribution_by_window_and_quiet_between() -> None:
    ws = [cp.Window(10.0, 20.0, "drain", 0), cp.Window(30.0, 35.0, "kill9", 1)]
    assert cp.attribute(5.0, ws) == (cp.QUIET, None)
    assert cp.attribute(10.0, ws) == ("drain", 0)
    assert cp.attribute(19.99, ws) == ("drain", 0)
    assert cp.attribute(20.0, ws) == (cp.QUIET, None)  # the window's end is exclusive
    assert cp.attribute(34.0, ws) == ("kill9", 1)
    assert cp.attribute(99.0, ws) == (cp.QUIET, None)
    assert cp.attribute(1.0, []) == (cp.QUIET, None)


def test_holder_spans_from_changes() -> None:
    spans = cp.count_spans([(0.0, 1), (5.0, 2), (5.5, 1), (9.0, 0), (9.2, 1)], 12.0)
    assert spans == {1: [(0.0, 5.0), (5.5, 9.0), (9.2, 12.0)], 2: [(5.0, 5.5)], 0: [(9.0, 9.2)]}
    assert cp.overlap(spans[1], 4.0, 6.0) == pytest.approx(1.5)
    assert cp.longest(spans[1], 0.0, 12.0) == pytest.approx(5.0)


def test_role_counts_treat_death_and_other_roles_as_not_active() -> None:
    events = [(1.0, "a", "active"), (1.1, "b", "backup"), (4.0, "b", "active"),
              (4.2, "a", "backup"), (6.0, "b", "dead"), (6.5, "a", "active")]  # fmt: skip
    assert cp.role_counts(events, ("a", "b")) == [(1.1, 1), (4.0, 2), (4.2, 1), (6.0, 0),
                                                  (6.5, 1)]  # fmt: skip


def test_summary_per_kind_with_quiet_and_total() -> None:
    ws = [cp.Window(10.0, 20.0, "drain", 0, healed=14.0), cp.Window(30.0, 40.0, "partition", 1,
                                                                     healed=35.0)]  # fmt: skip
    requests = [(5.0, True), (11.0, True), (12.0, False), (25.0, False), (31.0, False),
                (45.0, True), (60.0, False)]  # fmt: skip  (the last one is after the soak)
    longs = [(33.0, "broken"), (33.5, "open_failed"), (26.0, "broken")]
    holders = cp.count_spans([(0.0, 1), (31.0, 2), (35.3, 1), (38.0, 0), (38.5, 1)], 50.0)
    roles = cp.count_spans([(0.0, 1), (31.2, 2), (35.2, 1)], 50.0)
    logged = [(31.2, "transition"), (35.2, "transition"), (22.0, "stall")]
    rows = cp.summarize(ws, requests, longs, holders, (0.0, 50.0), roles, logged)
    d, p, q, tot = rows["drain"], rows["partition"], rows[cp.QUIET], rows["total"]
    assert (d.count, d.sent, d.failed, d.long_broken, d.two_active) == (1, 2, 1, 0, 0.0)
    assert d.planned and not p.planned
    assert (p.sent, p.failed, p.long_broken, p.long_open_failed) == (1, 1, 1, 1)
    assert p.two_active == pytest.approx(4.3)
    assert p.two_active_max == pytest.approx(4.3)
    assert p.two_after_heal == pytest.approx(0.3)  # from the heal at 35.0 to 35.3
    assert p.no_active == pytest.approx(0.5)
    assert p.log_two_active == pytest.approx(4.0)
    assert (p.transitions, q.stalls) == (2, 1)
    assert (q.sent, q.failed, q.long_broken, q.seconds) == (3, 1, 1, pytest.approx(30.0))
    assert (tot.sent, tot.failed, tot.long_broken) == (6, 3, 2)
    assert tot.two_active == pytest.approx(4.3) and q.two_active == pytest.approx(0.0)
    assert tot.seconds == pytest.approx(50.0)
    assert tot.two_after_heal == pytest.approx(0.3)  # the worst of the kinds
