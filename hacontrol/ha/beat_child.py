"""The heartbeat sender process (``python -m hacontrol.ha.beat_child``, started by
hacontrol.ha.beat_proc): sends the daemon's published heartbeat every interval from an
interpreter of its own, so nothing the daemon's interpreter does (a full garbage collection, a
long call that holds it) delays a heartbeat.

Its standard input is a pipe from the daemon: first one ``init`` frame (the key, the boot epoch
and nonce, the peer paths, the interval and the liveness window, the descriptors of the
heartbeat socket and of the shared board), then ``publish`` frames (the message or None, when the
daemon's role machine last stepped, the echo to stamp). Frames are a 4-byte length and a pickle
(the daemon is the only writer: its own child, same user). End of input (the daemon stopped,
closed it, or died) ends the process; so does the daemon's death (PR_SET_PDEATHSIG).

It sends what hacontrol.ha.beat_schedule says (the same schedule and liveness rule as the
sender thread), stamped by hacontrol.ha.beat_stamp with even sequence numbers, and never while
the daemon is stopped (SIGSTOP: its state in /proc is ``T``), so a stopped daemon falls silent
at once as before. Its counters are written to the shared board; the daemon logs and counts
them. Signals meant for the daemon's process group (SIGHUP, SIGINT, SIGTERM, SIGUSR1/2) are
ignored: the daemon ends it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from hacontrol.ha.beat_schedule import BeatSchedule
from hacontrol.ha.beat_stamp import SharedBoard, stamp
from hacontrol.ha.packet import Message

PR_SET_PDEATHSIG = 1
_LEN = struct.Struct("<I")


def frames(buf: bytearray) -> list[Any]:
    """Take every whole frame off the front of ``buf``."""
    out: list[Any] = []
    while len(buf) >= 4:
        (n,) = _LEN.unpack_from(buf)
        if len(buf) < 4 + n:
            break
        out.append(pickle.loads(bytes(buf[4 : 4 + n])))
        del buf[: 4 + n]
    return out


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(data)) + data


def stopped(pid: int) -> bool:
    """The process ``pid`` is stopped (SIGSTOP) or gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in (b"T", b"t", b"Z", b"X")


class Child:
    """The sender loop (one per daemon)."""

    def __init__(self, init: dict[str, Any], fd_in: int) -> None:
        self.fd_in = fd_in
        self.key, self.epoch, self.nonce = init["key"], init["epoch"], init["nonce"]
        self.paths: list[tuple[str, int]] = [(str(h), int(port)) for h, port in init["paths"]]
        self.ppid = init["ppid"]
        self.sock = socket.socket(fileno=init["sock_fd"])
        self.board = SharedBoard(init["board_fd"])
        self.sched: BeatSchedule[Message] = BeatSchedule(
            init["interval"], init["window"], time.monotonic()
        )
        self.echo: bytes = init["echo"]
        self.buf = bytearray()

    def run(self) -> None:
        self.board.set("ready", 1)
        wake = time.monotonic()
        while True:
            ready, _, _ = select.select([self.fd_in], [], [], max(0.0, wake - time.monotonic()))
            if ready:
                data = os.read(self.fd_in, 1 << 16)
                if not data:
                    return  # the daemon closed the pipe or died
                self.buf += data
                for msg, at, echo in frames(self.buf):
                    self.sched.publish(msg, at)
                    self.echo = echo
            st = self.sched.step(time.monotonic())
            wake = st.wake_at
            if st.note is not None:
                paused = st.note.event == "ha.beat_paused"
                self.board.set("paused", int(paused))
                if paused:
                    self.board.set("pauses", self.board.get("pauses") + 1)
                    self.board.set("pause_age_us", int(st.note.age * 1e6))
            if st.send is None:
                continue
            if stopped(self.ppid):
                self.board.set("stopped_skips", self.board.get("stopped_skips") + 1)
                continue
            self.send(st.send, st.late)

    def send(self, msg: Message, late: float) -> None:
        for i, addr in enumerate(self.paths):
            seq = self.board.take_seq("child_seq", "daemon_seq", 0)
            data = stamp(msg, epoch=self.epoch, seq=seq, nonce=self.nonce, echo=self.echo,
                         key=self.key)  # fmt: skip
            try:
                self.sock.sendto(data, addr)
            except OSError:
                self.board.set("errors", self.board.get("errors") + 1)
                continue
            self.board.set("sent", self.board.get("sent") + 1)
            self.board.add_path_sent(i)
        self.board.set("late_max_us", max(self.board.get("late_max_us"), int(late * 1e6)))


def main() -> None:
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, signal.SIG_IGN)
    fd_in = sys.stdin.fileno()
    buf = bytearray()
    while not (got := frames(buf)):
        data = os.read(fd_in, 1 << 16)
        if not data:
            return
        buf += data
    init = got[0]
    with contextlib.suppress(OSError, AttributeError):  # die with the daemon, pipe or not
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != init["ppid"]:
        return  # the daemon died before the line above
    child = Child(init, fd_in)
    for msg, at, echo in got[1:]:  # published before this process read its input
        child.sched.publish(msg, at)
        child.echo = echo
    child.buf = buf
    child.run()


if __name__ == "__main__":
    main()
