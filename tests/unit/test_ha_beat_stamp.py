"""The heartbeat stamping shared by the daemon and its sender process (hacontrol.ha.beat_stamp):
sequence numbers of both sides through the shared board stay unique and increasing on each side
and pass the receiver's replay window however the two interleave; ``stamp`` is what the
transport sends (decoded back with the key); the sender process's input frames
(hacontrol.ha.beat_child) come out whole, in order, however the pipe cuts them; ``stopped``
reads a process state from /proc."""

from __future__ import annotations

import os
import random

import pytest

from hacontrol.ha import packet as pk
from hacontrol.ha.beat_child import frame, frames, stopped
from hacontrol.ha.beat_stamp import SharedBoard, next_seq, stamp

KEY = b"stamp test key 0123456789"


@pytest.mark.parametrize(
    ("own", "other", "parity", "want"),
    [
        (0, 0, 1, 1),  # the daemon's first: odd
        (0, 0, 0, 2),  # the sender's first: even
        (1, 0, 1, 3),
        (1, 2, 1, 3),
        (1, 8, 1, 9),  # the other side went ahead: jump above it
        (9, 8, 0, 10),
        (10, 3, 0, 12),
        (7, 7, 0, 8),
    ],
)
def test_next_seq(own: int, other: int, parity: int, want: int) -> None:
    assert next_seq(own, other, parity) == want


def test_board_sequence_numbers_interleaved_pass_the_replay_window() -> None:
    board = SharedBoard.create()
    try:
        rng = random.Random(8)
        taken: dict[str, list[int]] = {"daemon_seq": [], "child_seq": []}
        order: list[int] = []
        for _ in range(2000):
            if rng.random() < 0.8:  # the sender process sends most
                order.append(board.take_seq("child_seq", "daemon_seq", 0))
                taken["child_seq"].append(order[-1])
            else:
                order.append(board.take_seq("daemon_seq", "child_seq", 1))
                taken["daemon_seq"].append(order[-1])
        guard = pk.ReplayGuard()
        for i in range(0, len(order) - 1, 2):  # every pair arriving swapped, too
            order[i], order[i + 1] = order[i + 1], order[i]
        assert [guard.check("dir-a", 7, s) for s in order] == [None] * len(order)
        d, c = taken["daemon_seq"], taken["child_seq"]
        assert all(s % 2 == 1 for s in d) and all(s % 2 == 0 for s in c)
        assert d == sorted(set(d)) and c == sorted(set(c)) and not set(d) & set(c)
        assert board.get("daemon_seq") == d[-1] and board.get("child_seq") == c[-1]
    finally:
        board.close()


def test_board_counters_and_paths() -> None:
    board = SharedBoard.create()
    other = SharedBoard(os.dup(board.fd))  # what the sender process maps
    try:
        other.set("sent", 5)
        other.add_path_sent(1)
        other.add_path_sent(1)
        assert board.get("sent") == 5 and board.path_sent(1) == 2 and board.path_sent(0) == 0
        board.set("late_max_us", -3)  # clamped, never negative
        assert other.get("late_max_us") == 0
    finally:
        other.close()
        board.close()


def test_stamp_is_what_decodes() -> None:
    msg = pk.Message(
        type=pk.MsgType.HEARTBEAT, node="dir-a", role=pk.WireRole.ACTIVE, priority=150,
        effective_priority=150, epoch=0, seq=0, digest=b"\x01" * pk.DIGEST_LEN, flags=0,
    )  # fmt: skip
    nonce, echo = b"\x11" * pk.NONCE_LEN, b"\x22" * pk.NONCE_LEN
    data = stamp(msg, epoch=42, seq=7, nonce=nonce, echo=echo, key=KEY)
    got = pk.decode(data, KEY)
    assert (got.epoch, got.seq, got.nonce, got.echo, got.node) == (42, 7, nonce, echo, "dir-a")
    with pytest.raises(pk.PacketError):
        pk.decode(data, b"another key, not ours")


def test_frames_come_out_whole_however_the_pipe_cuts_them() -> None:
    sent = [("hb", 1.5, b"e" * 8), None, {"k": list(range(300))}, ("x" * 5000, 2.0, b"")]
    stream = b"".join(frame(o) for o in sent)
    rng = random.Random(3)
    buf, got = bytearray(), []
    i = 0
    while i < len(stream):
        n = rng.randint(1, 700)
        buf += stream[i : i + n]
        i += n
        got += frames(buf)
    assert got == sent and not buf


def test_stopped_reads_the_process_state() -> None:
    assert not stopped(os.getpid())
    assert stopped(2**22 + 12345)  # no such process: gone counts as stopped
