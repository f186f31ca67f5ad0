"""The heartbeat sender thread: sends the loop's published heartbeat every interval, so big work
on the event loop (a first load, a resync, a scrape, a refused config) never delays a heartbeat.
It shares the daemon's interpreter: what holds that (a full garbage collection of a big table)
holds the thread too, which is why the daemon uses the sender process (hacontrol.ha.beat_proc,
the same schedule and rules); the thread remains for ``HaRunner(beat="thread")``.

The I/O shell around hacontrol.ha.beat_schedule (the schedule and the liveness rule: it pauses
once the loop's last publish is older than ``stall_factor x interval``). It owns one daemon
thread, ``ha-beat``, the schedule (behind a lock: the loop publishes, the thread steps) and its
log lines and counters:

- ``ha.beat_paused`` / ``ha.beat_resumed`` (reason, the loop's ``age``; counted in
  ``hacontrol_ha_beat_pauses_total{reason}``),
- ``ha.beat_error`` (a send that raised: logged at most once per ``log_every`` seconds with the
  number suppressed, counted in ``hacontrol_ha_beat_errors_total{reason}``, and the thread goes
  on; anything else stops the thread, logged, and ``alive`` turns False: the runner then sends
  from its tick again),
- ``late_max``: the largest lateness of a send behind its slot (in the status and /metrics:
  ``hacontrol_ha_beat_late_max_seconds``, by hacontrol.metrics.beat_families).

``send`` is the transport's thread-safe path (``HaTransport.send_threaded``: the same stamping,
sequence numbers and MAC as the loop's sends). The clock must be CLOCK_MONOTONIC read fresh
(``hacontrol.clock.monotonic``; the loop's publish times are on the same base, to the
millisecond under uvloop), not an event loop's ``time`` (uvloop's updates the loop's own state:
not a call for another thread). The thread sleeps in real seconds. Virtual-time tests keep the
loop-driven sends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha.beat_schedule import BeatSchedule, Note
from hacontrol.metrics import Metrics

__all__ = ["BeatThread"]

log = logs.get("hacontrol.ha.beat")

T = TypeVar("T")


class BeatThread(Generic[T]):
    """Start once, publish from the loop, stop (and join) once."""

    def __init__(
        self,
        send: Callable[[T], int],
        *,
        interval: float,
        window: float,
        clock: Clock,
        metrics: Metrics,
        log_every: float = 5.0,
    ) -> None:
        self.send, self.clock, self.metrics, self.log_every = send, clock, metrics, log_every
        self.sched: BeatSchedule[T] = BeatSchedule(interval, window, clock())
        self.sent = 0
        self.late_max = 0.0
        self.error: str | None = None  # why the thread stopped, if it failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = float("-inf")
        self._suppressed = 0

    @property
    def alive(self) -> bool:
        """The thread runs (started, not stopped, not failed)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    @property
    def paused(self) -> bool:
        return self.sched.paused

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the heartbeat sender thread was already started")
        self._thread = threading.Thread(target=self._run, name="ha-beat", daemon=True)
        self._thread.start()

    def publish(self, content: T | None, at: float) -> None:
        """The heartbeat to send from now on (None: send nothing), and when the loop's role
        machine last stepped (the liveness the thread checks)."""
        with self._lock:
            self.sched.publish(content, at)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and wait for it (bounded; it never sleeps past the stop)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():  # pragma: no cover - a sendto that hangs
                log.error("ha.beat_error", reason=f"sender thread did not stop in {timeout}s")

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._lock:
                    st = self.sched.step(self.clock())
                if st.note is not None:
                    self._noted(st.note)
                if st.send is not None:
                    self._send(st.send, st.late)
                self._stop.wait(max(0.0, st.wake_at - self.clock()))
        except Exception as e:  # a bug: stop visibly, the runner's tick sends again
            self.error = repr(e)
            self.metrics.ha_beat_errors.labels(reason="thread").inc()
            log.exception("ha.beat_error", reason=f"sender thread stopped: {e!r}; the loop sends")

    def _noted(self, note: Note) -> None:
        if note.event == "ha.beat_paused":
            self.metrics.ha_beat_pauses.labels(reason="loop_stalled").inc()
            log.warning(note.event, reason=note.reason, loop_age=note.age)
        else:
            log.info(note.event, reason=note.reason, loop_age=note.age)

    def _send(self, content: T, late: float) -> None:
        try:
            self.send(content)
        except Exception as e:  # never into nowhere: counted, logged (rate-limited), go on
            self.metrics.ha_beat_errors.labels(reason="send").inc()
            now = self.clock()
            if now - self._last_error_log < self.log_every:
                self._suppressed += 1
                return
            self._last_error_log = now
            log.error("ha.beat_error", reason=f"send failed: {e!r}", suppressed=self._suppressed)
            self._suppressed = 0
            return
        self.sent += 1
        self.late_max = max(self.late_max, late)
