"""The loop-lag monitor: it measures how late its timer runs, keeps the largest in the gauge,
and logs a stall; a loop held by synchronous work shows up as that long."""

from __future__ import annotations

import asyncio
import time

import pytest

from hacontrol.looplag import LoopLag
from hacontrol.metrics import Metrics


def test_record_keeps_the_largest_in_the_gauge() -> None:
    m = Metrics()
    lag = LoopLag(m.loop_lag_max, m.loop_lag, warn_after=0.1)
    for v in (0.001, 0.05, 0.002):
        lag.record(v)
    assert (lag.max, lag.last, lag.samples) == (0.05, 0.002, 3)
    text = m.render()
    assert b"hacontrol_loop_lag_max_seconds 0.05" in text
    assert b'hacontrol_loop_lag_seconds_bucket{le="0.025"} 2.0' in text
    assert b"hacontrol_loop_lag_seconds_count 3.0" in text


def test_a_held_loop_is_measured_at_least_as_long_as_it_was_held() -> None:
    held = 0.15

    async def main() -> LoopLag:
        lag = LoopLag(period=0.01, warn_after=10)
        lag.start()
        await asyncio.sleep(0.05)
        time.sleep(held)  # noqa: ASYNC251 - synchronous work holding the loop, as a big parse
        await asyncio.sleep(0.05)
        lag.stop()
        return lag

    lag = asyncio.run(main())
    assert lag.samples >= 2
    # the timer due during the hold ran after it: late by the hold minus at most one period
    assert lag.max >= held - 0.01


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LoopLag(period=0)
