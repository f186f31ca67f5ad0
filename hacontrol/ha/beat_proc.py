"""The daemon's side of the heartbeat sender process (hacontrol.ha.beat_child): start it, hand it
the current heartbeat, read back what it did, end it.

The sender thread (hacontrol.ha.beat) shares the daemon's interpreter: a full garbage collection
of a big table (100-140 ms at 36,544 destinations) holds it and the thread with it. The process
does not share it. ``BeatProcess`` has the thread's surface (``start``, ``publish``, ``stop``,
``alive``, ``paused``, ``sent``, ``late_max``, ``error``) plus ``poll``, called on every tick: it
turns the shared board's counters (hacontrol.ha.beat_stamp) into the daemon's logs
(``ha.beat_paused`` with the loop's age when it paused, ``ha.beat_resumed``, ``ha.beat_error``),
its counters (``hacontrol_ha_beat_pauses_total``, ``hacontrol_ha_beat_errors_total``, the sent
heartbeats per path) and notices a sender that died (then ``alive`` is False and the event loop
sends again). Publishing is a write of one frame to a non-blocking pipe: the loop never waits
for the process; frames it cannot take yet are kept (bounded) and written with the next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence

from hacontrol import logs
from hacontrol.ha.beat_child import frame
from hacontrol.ha.beat_stamp import SharedBoard
from hacontrol.ha.packet import Message
from hacontrol.metrics import Metrics

__all__ = ["BeatProcess"]

log = logs.get("hacontrol.ha.beat")

MAX_PENDING = 256 << 10  # bytes of frames the process has not taken: beyond, it is stuck


class BeatProcess:
    """Start once (after the transport is open), publish from the loop, stop once."""

    def __init__(
        self,
        *,
        key: bytes,
        epoch: int,
        nonce: bytes,
        echo: Callable[[], bytes],
        paths: Sequence[tuple[str, int]],
        count_sent: Callable[[int, int], None],
        sock_fd: int,
        board: SharedBoard,
        interval: float,
        window: float,
        metrics: Metrics,
    ) -> None:
        self.echo, self.count_sent, self.board, self.metrics = echo, count_sent, board, metrics
        self.sock_fd = sock_fd
        self.init: dict[str, object] = {
            "key": key, "epoch": epoch, "nonce": nonce, "echo": echo(), "paths": list(paths),
            "sock_fd": sock_fd, "board_fd": board.fd, "interval": interval, "window": window,
            "ppid": os.getpid(),
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.error: str | None = None
        self.late_max = 0.0
        self.sent = 0
        self._wfd = -1
        self._pending = b""
        self._seen = {"pauses": 0, "errors": 0, "paused": 0}
        self._path_sent = [0] * len(paths)

    def start(self) -> None:
        rfd, self._wfd = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hacontrol.ha.beat_child"], stdin=rfd,
                pass_fds=(self.sock_fd, self.board.fd), close_fds=True,
            )  # fmt: skip
        except OSError:
            os.close(self._wfd)
            self._wfd = -1
            raise
        finally:
            os.close(rfd)
        os.set_blocking(self._wfd, False)
        self._write(frame(self.init))
        log.info("ha.beat_started", pid=self.proc.pid, reason="heartbeat sender process")

    @property
    def alive(self) -> bool:
        """It runs and has taken over the periodic heartbeats."""
        p = self.proc
        return p is not None and p.poll() is None and self.board.get("ready") == 1

    @property
    def paused(self) -> bool:
        return self.board.get("paused") == 1

    def publish(self, content: Message | None, at: float) -> None:
        """The heartbeat to send from now on (None: nothing), and when the machine last stepped."""
        if self.proc is not None and self._wfd >= 0 and self.error is None:
            self._write(frame((content, at, self.echo())))

    def poll(self) -> None:
        """Read the board: log and count what the process did since the last poll."""
        b, seen = self.board, self._seen
        for i, n in enumerate(self._path_sent):
            now = b.path_sent(i)
            if now > n:
                self.count_sent(i, now - n)
                self._path_sent[i] = now
        self.sent = b.get("sent")
        self.late_max = b.get("late_max_us") / 1e6
        pauses, errors, paused = b.get("pauses"), b.get("errors"), b.get("paused")
        if pauses > seen["pauses"]:
            self.metrics.ha_beat_pauses.labels(reason="loop_stalled").inc(pauses - seen["pauses"])
            age = round(b.get("pause_age_us") / 1e6, 3)
            why = f"the event loop's last heartbeat content was {age:.3f}s old"
            log.warning("ha.beat_paused", reason=why, loop_age=age, pauses=pauses)
        elif paused < seen["paused"]:
            log.info("ha.beat_resumed", reason="the event loop publishes again")
        if errors > seen["errors"]:
            self.metrics.ha_beat_errors.labels(reason="send").inc(errors - seen["errors"])
            log.error("ha.beat_error", reason="the sender process failed sends",
                      failed=errors - seen["errors"])  # fmt: skip
        seen.update(pauses=pauses, errors=errors, paused=paused)
        p = self.proc
        if p is not None and self.error is None and p.poll() is not None:
            self.error = f"sender process exited with {p.returncode}"
            self.metrics.ha_beat_errors.labels(reason="process").inc()
            log.error("ha.beat_error", reason=f"{self.error}; the event loop sends")

    def stop(self, timeout: float = 2.0) -> None:
        """End the process (its input closed) and wait for it (bounded, then killed)."""
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1
        p = self.proc
        if p is None:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - a sendto that hangs
            log.error("ha.beat_error", reason=f"sender process did not end in {timeout}s: killed")
            p.kill()
            p.wait(timeout)

    def _write(self, data: bytes) -> None:
        out = self._pending + data
        try:
            n = os.write(self._wfd, out)
        except BlockingIOError:
            n = 0
        except OSError as e:  # the process is gone: poll() says so
            self._pending = b""
            if self.error is None:
                log.error("ha.beat_error", reason=f"cannot publish to the sender process: {e}")
            return
        self._pending = out[n:]
        if len(self._pending) > MAX_PENDING and self.proc is not None:
            self._pending = b""  # a frame cut in two cannot be sent on: end the process
            self.metrics.ha_beat_errors.labels(reason="publish").inc()
            log.error("ha.beat_error", reason="the sender process takes no input: killed")
            self.proc.kill()
