"""The lab's pure traffic analysis: distribution, failures, outage, first/last answers."""

from __future__ import annotations

import math

import pytest

from hacontrol.lab.traffic import (
    Request,
    between,
    distribution,
    failures,
    first_answer,
    last_answer,
    outage,
    request_from,
)


def ok(t: float, server: str, dt: float = 0.0) -> Request:
    return Request(t, dt, True, server)


def bad(t: float, dt: float = 0.0, error: str = "ConnectionRefusedError") -> Request:
    return Request(t, dt, False, None, error)


def test_distribution_counts_answers_only_sorted_by_name() -> None:
    reqs = [ok(0, "rs2"), ok(1, "rs1"), bad(2), ok(3, "rs2")]
    assert distribution(reqs) == {"rs1": 1, "rs2": 2}
    assert list(distribution(reqs)) == ["rs1", "rs2"]


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(0, math.inf, 2), (2, math.inf, 1), (0, 2, 1), (5, math.inf, 0)],
)
def test_failures_in_window(start: float, end: float, expected: int) -> None:
    reqs = [ok(0, "a"), bad(1), ok(2, "a"), bad(3)]
    assert failures(reqs, start, end) == expected
    assert len(between(reqs, start, end)) == sum(1 for r in reqs if start <= r.t < end)


@pytest.mark.parametrize(
    ("reqs", "start", "end", "expected"),
    [
        # steady answers every 0.1 s: the gap is the interval
        ([ok(i / 10, "a") for i in range(10)], 0.3, 0.6, 0.1),
        # answers stop at 1.0 and resume at 2.5: the outage spans the event at 1.2 whole
        ([ok(0.9, "a"), ok(1.0, "a"), bad(1.1), bad(1.5), ok(2.5, "a"), ok(2.6, "a")], 1.2, 2.0,
         1.5),
        # the gap is measured at answer times (start + latency): 1.5 -> 3.0, not 1.2 -> 3.0
        ([ok(1.0, "a", dt=0.5), ok(1.2, "a", dt=0.1), ok(3.0, "a")], 1.0, 4.0, 1.5),
        # a longer gap outside the window (before the last answer preceding it) does not count
        ([ok(0, "a"), ok(5, "a"), ok(5.1, "a"), ok(5.2, "a")], 5.05, 6, 0.1),
    ],
)  # fmt: skip
def test_outage(reqs: list[Request], start: float, end: float, expected: float) -> None:
    assert outage(reqs, start, end) == pytest.approx(expected)


def test_outage_without_an_answer_after_is_infinite_and_empty_is_zero() -> None:
    assert outage([ok(0, "a"), bad(1), bad(2)], 0.5) == math.inf
    assert outage([], 0.5) == 0.0


def test_first_and_last_answer_of_a_server() -> None:
    reqs = [ok(0, "rs2", 0.01), ok(1, "rs1"), ok(2, "rs2", 0.02), bad(3), ok(4, "rs2", 0.03)]
    assert first_answer(reqs, "rs2", after=1) == pytest.approx(2.02)
    assert first_answer(reqs, "rs3", after=0) is None
    assert last_answer(reqs, "rs2", before=4) == pytest.approx(2.02)
    assert last_answer(reqs, "rs2", before=0) is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"t": 1, "dt": 0.5, "ok": True, "server": "rs1", "error": None}, ok(1, "rs1", 0.5)),
        ({"t": 2, "dt": 1, "ok": False, "error": "timeout"}, bad(2, 1, "timeout")),
        ({"t": "x", "dt": 1, "ok": True}, None),
        ({"dt": 1, "ok": True}, None),
    ],
)
def test_request_from_a_load_line(line: dict[str, object], expected: Request | None) -> None:
    assert request_from(line) == expected
