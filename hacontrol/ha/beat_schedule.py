"""When the heartbeat sender thread sends, and what: pure (``now`` in, a decision out).

The event loop publishes the heartbeat's *content* (hacontrol.ha.runner builds it on every tick
and every machine change; ``None`` when nothing may be sent: silent, done, taking the VIPs) with
the time the role machine last stepped. The sender (hacontrol.ha.beat, a thread) asks ``step``
at each wake-up:

- It sends on its own monotonic schedule, like the loop's tick: ``next_at = max(next_at +
  interval, now + interval / 10)`` (late wake-ups do not bunch sends; a long one skips slots).
- It sends only while the loop is alive: the machine's last step is at most ``window`` old
  (``stall_factor x interval``, the machine's own stall notion). Older: it *pauses* (once,
  reason ``loop_stalled`` with the loop's age) and sends nothing until the loop publishes again
  (then it *resumes*). So a hung daemon is not kept alive by its thread, and after SIGSTOP /
  SIGCONT the machine's stall handling runs (and is published) before the thread speaks again.
- Before the first publish it sends nothing (not a pause); the first publish is due at once.

Generic in the content type: the tests use strings, the runner ``pk.Message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BeatSchedule", "Note", "Step"]

T = TypeVar("T")


@dataclass(frozen=True)
class Note:
    """A change of the sender's state to log and count: ``event`` is ``ha.beat_paused`` or
    ``ha.beat_resumed``; ``age``: how old the loop's last publish was (seconds)."""

    event: str
    reason: str
    age: float


@dataclass(frozen=True)
class Step(Generic[T]):
    """What to do now: send ``send`` (None: nothing), then sleep until ``wake_at``; ``late``:
    how far behind its slot this decision is (0 when not due); ``note``: a pause or resume."""

    send: T | None
    wake_at: float
    late: float = 0.0
    note: Note | None = None


class BeatSchedule(Generic[T]):
    """The sender's schedule and liveness; the owner serialises ``publish`` and ``step``."""

    def __init__(self, interval: float, window: float, start: float) -> None:
        if interval <= 0 or window <= 0:
            raise ValueError(f"interval {interval} and window {window} must be positive")
        self.interval, self.window = interval, window
        self.next_at = start
        self.content: T | None = None
        self.published_at: float | None = None  # when the loop's machine last stepped
        self.paused = False
        self.pauses = 0
        self.due_now = False

    def publish(self, content: T | None, at: float) -> None:
        """The loop's current content, with the time its machine last stepped (``at``). After
        a pause, the next due slot sends it (and notes the resume)."""
        if self.published_at is None:  # the first content: due at once (a sender taking over
            self.due_now = True  # from the loop leaves no gap), and not late by definition
        self.content, self.published_at = content, at

    def step(self, now: float) -> Step[T]:
        """The decision at ``now``."""
        if now < self.next_at and not self.due_now:
            return Step(None, self.next_at)
        if self.due_now:  # the first content: a fresh phase from now
            late, self.due_now, self.next_at = 0.0, False, now + self.interval
        else:
            late = now - self.next_at
            self.next_at = max(self.next_at + self.interval, now + self.interval / 10)
        if self.published_at is None:
            return Step(None, self.next_at, late)
        age = now - self.published_at
        if age > self.window:
            if self.paused:
                return Step(None, self.next_at, late)
            self.paused = True
            self.pauses += 1
            why = f"the event loop's last heartbeat content is {age:.3f}s old (> {self.window:g}s)"
            return Step(None, self.next_at, late, Note("ha.beat_paused", why, round(age, 3)))
        note = None
        if self.paused:
            self.paused = False
            note = Note("ha.beat_resumed", "the event loop publishes again", round(age, 3))
        return Step(self.content, self.next_at, late, note)
