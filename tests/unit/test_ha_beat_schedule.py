"""The heartbeat sender's schedule and liveness (hacontrol.ha.beat_schedule), table-driven on an
injected clock: each script is a list of steps, ``("pub", t, content, at)`` (the loop publishes
at time ``t`` content last stepped at ``at``) or ``("step", t)`` with what the sender must do
then: send what, sleep until when, how late, and which note (pause or resume). Then the thread
shell (hacontrol.ha.beat) with a real thread and a send that records, errs or breaks: waits are
on events with generous bounds, never on timing."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hacontrol.clock import monotonic
from hacontrol.ha.beat import BeatThread
from hacontrol.ha.beat_schedule import BeatSchedule
from hacontrol.metrics import Metrics, beat_families

IV, W = 0.25, 0.5  # interval, window (stall_factor 2); binary fractions: exact comparisons

Script = list[tuple[Any, ...]]

SCRIPTS: dict[str, Script] = {
    "nothing before the first publish": [
        ("step", 0.0, None, 0.25, 0.0, None),
        ("step", 0.25, None, 0.5, 0.0, None),
    ],
    "sends the published content every interval": [
        ("pub", 0.0, "hb1", 0.0),
        ("step", 0.0, "hb1", 0.25, 0.0, None),
        ("step", 0.125, None, 0.25, 0.0, None),  # woke early: not due, sleep on
        ("pub", 0.1875, "hb2", 0.1875),
        ("step", 0.25, "hb2", 0.5, 0.0, None),
        ("step", 0.5, "hb2", 0.75, 0.0, None),
    ],
    "a late wake-up sends once and does not bunch (next >= now + interval/10)": [
        ("pub", 0.0, "hb", 0.0),
        ("step", 0.0, "hb", 0.25, 0.0, None),
        ("pub", 0.4375, "hb", 0.4375),
        ("step", 0.5, "hb", 0.525, 0.25, None),  # slot 0.25 late by 0.25: next 0.5 -> 0.525
        ("step", 0.525, "hb", 0.775, 0.0, None),
    ],
    "the first publish is due at once (a sender taking over from the loop)": [
        ("step", 0.0, None, 0.25, 0.0, None),
        ("pub", 0.125, "hb", 0.125),
        ("step", 0.125, "hb", 0.375, 0.0, None),  # not at the 0.25 slot: no gap at the switch
        ("step", 0.375, "hb", 0.625, 0.0, None),
    ],
    "a first content stepped before the sender began is sent at once, not late": [
        ("pub", 0.5, "hb", 0.25),  # the sender's process started at 0.0, its input queued
        ("step", 0.5, "hb", 0.75, 0.0, None),
    ],
    "None published: nothing sent, not a pause": [
        ("pub", 0.0, None, 0.0),
        ("step", 0.0, None, 0.25, 0.0, None),
        ("pub", 0.125, "hb", 0.125),
        ("step", 0.25, "hb", 0.5, 0.0, None),
    ],
    "content exactly one window old still goes out": [
        ("pub", 0.0, "hb", 0.0),
        ("step", 0.0, "hb", 0.25, 0.0, None),
        ("step", 0.25, "hb", 0.5, 0.0, None),
        ("step", 0.5, "hb", 0.75, 0.0, None),
    ],
    "a stalled loop pauses the sender once, its next publish resumes it": [
        ("pub", 0.0, "hb", 0.0),
        ("step", 0.0, "hb", 0.25, 0.0, None),
        ("step", 0.25, "hb", 0.5, 0.0, None),
        ("step", 0.5, "hb", 0.75, 0.0, None),
        ("step", 0.75, None, 1.0, 0.0, "ha.beat_paused"),  # 0.75 old > 0.5
        ("step", 1.0, None, 1.25, 0.0, None),  # paused: noted once
        ("pub", 1.125, "hb-yielding", 1.125),
        ("step", 1.25, "hb-yielding", 1.5, 0.0, "ha.beat_resumed"),
        ("step", 1.5, "hb-yielding", 1.75, 0.0, None),
    ],
    "SIGSTOP: the first wake-up after it finds the publish old and stays quiet": [
        ("pub", 0.0, "hb-active", 0.0),
        ("step", 0.0, "hb-active", 0.25, 0.0, None),
        ("step", 5.0, None, 5.025, 4.75, "ha.beat_paused"),  # next: now + interval / 10
        ("step", 5.025, None, 5.275, 0.0, None),
        ("pub", 5.125, "hb-yielding", 5.125),  # the machine's stall handling ran
        ("step", 5.275, "hb-yielding", 5.525, 0.0, "ha.beat_resumed"),
    ],
    "a publish that carries an old step time (no machine step since) does not resume": [
        ("pub", 0.0, "hb", 0.0),
        ("step", 0.0, "hb", 0.25, 0.0, None),
        ("step", 1.0, None, 1.025, 0.75, "ha.beat_paused"),
        ("pub", 1.0, "hb-again", 0.0),  # an immediate send's content: the machine is still old
        ("step", 1.025, None, 1.275, 0.0, None),
    ],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_schedule_scripts(name: str) -> None:
    sched: BeatSchedule[str] = BeatSchedule(IV, W, start=0.0)
    for i, row in enumerate(SCRIPTS[name]):
        if row[0] == "pub":
            sched.publish(row[2], row[3])
            continue
        _, t, send, wake_at, late, note = row
        st = sched.step(t)
        got = (st.send, round(st.wake_at, 6), round(st.late, 6), st.note and st.note.event)
        assert got == (send, wake_at, late, note), f"{name}: step {i} at {t}"


def test_pause_note_says_how_old_the_loop_is() -> None:
    sched: BeatSchedule[str] = BeatSchedule(IV, W, start=0.0)
    sched.publish("hb", 0.0)
    sched.step(0.0)
    st = sched.step(1.25)
    assert st.note is not None and st.note.age == 1.25 and "1.250s old" in st.note.reason
    assert sched.paused and sched.pauses == 1


@pytest.mark.parametrize(("interval", "window"), [(0.0, 0.4), (0.2, 0.0), (-1.0, 1.0)])
def test_schedule_refuses_nonpositive(interval: float, window: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        BeatSchedule(interval, window, start=0.0)


# -- the thread shell ------------------------------------------------------------------------


class Recorder:
    """A send that records what it was given; raises while ``fail`` is set."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.fail: Exception | None = None
        self.cond = threading.Condition()

    def __call__(self, content: str) -> int:
        with self.cond:
            if self.fail is not None:
                self.got.append("!" + content)
                self.cond.notify_all()
                raise self.fail
            self.got.append(content)
            self.cond.notify_all()
            return 1

    def wait(self, pred: Any, within: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.got), within), self.got


def make(send: Any, interval: float = 0.02) -> tuple[BeatThread[str], Metrics]:
    m = Metrics()
    # a window far beyond any scheduling hiccup: these tests are about the shell, not timing
    return BeatThread(send, interval=interval, window=60.0, clock=monotonic, metrics=m), m


def test_thread_sends_published_content_and_stops_on_join() -> None:
    rec = Recorder()
    bt, _ = make(rec)
    bt.start()
    try:
        bt.publish("one", monotonic())
        rec.wait(lambda g: g.count("one") >= 3)
        bt.publish("two", monotonic())
        rec.wait(lambda g: "two" in g)
        bt.publish(None, monotonic())
    finally:
        bt.stop()
    assert not bt.alive and bt.error is None
    n = len(rec.got)
    assert bt.sent == n and rec.got[0] == "one" and rec.got[-1] == "two"
    assert len(rec.got) == n  # joined: nothing sends after stop


def test_thread_keeps_going_through_send_errors() -> None:
    rec = Recorder()
    bt, m = make(rec)
    rec.fail = OSError(105, "No buffer space available")
    bt.start()
    try:
        bt.publish("hb", monotonic())
        rec.wait(lambda g: g.count("!hb") >= 3)
        rec.fail = None
        rec.wait(lambda g: "hb" in g)
        assert bt.alive
    finally:
        bt.stop()
    errors = m.registry.get_sample_value("hacontrol_ha_beat_errors_total", {"reason": "send"})
    assert errors is not None and errors >= 3


def test_thread_failure_is_visible_and_not_alive() -> None:
    bt, m = make(Recorder())
    done = threading.Event()

    def broken(now: float) -> Any:
        done.set()
        raise RuntimeError("a bug in the schedule")

    bt.sched.step = broken  # type: ignore[method-assign]
    bt.start()
    try:
        assert done.wait(10.0)
        for _ in range(1000):  # the thread ends right after the log line
            if not bt.alive:
                break
            threading.Event().wait(0.01)
        assert not bt.alive and bt.error is not None and "a bug" in bt.error
    finally:
        bt.stop()
    assert m.registry.get_sample_value("hacontrol_ha_beat_errors_total", {"reason": "thread"}) == 1


def test_thread_pauses_on_an_old_publish_and_counts_it() -> None:
    rec = Recorder()
    m = Metrics()
    bt = BeatThread(rec, interval=0.02, window=0.05, clock=monotonic, metrics=m)
    bt.start()
    try:
        bt.publish("stale", monotonic() - 10.0)  # the machine last stepped long ago
        for _ in range(1000):
            if bt.paused:
                break
            threading.Event().wait(0.01)
        assert bt.paused and "stale" not in rec.got
        bt.publish("fresh", monotonic() + 3600.0)  # stepped "now" for the rest of the test
        rec.wait(lambda g: "fresh" in g)
        assert not bt.paused
    finally:
        bt.stop()
    got = m.registry.get_sample_value("hacontrol_ha_beat_pauses_total", {"reason": "loop_stalled"})
    assert got == 1


def test_thread_starts_once() -> None:
    bt, _ = make(Recorder())
    bt.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            bt.start()
    finally:
        bt.stop()


def test_beat_series_follow_the_status_block() -> None:
    beat = {"sender": "thread", "alive": True, "paused": True, "sent": 9, "late_max_ms": 12.5,
            "error": None}  # fmt: skip
    got = {f.name: f.samples[0].value for f in beat_families(beat)}
    assert got == {
        "hacontrol_ha_beat_late_max_seconds": 0.0125,
        "hacontrol_ha_beat_paused": 1.0,
        "hacontrol_ha_beat_alive": 1.0,
    }
    assert beat_families({"sender": "loop"}) == [] and beat_families(None) == []
