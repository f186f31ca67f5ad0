"""Stamping a heartbeat for the wire, shared by the event loop's transport and the heartbeat
sender process, and the small shared memory through which the two agree on sequence numbers.

``stamp`` fills epoch, sequence number, boot nonce and echo and encodes with the MAC: the one
way a message is made ready to send (hacontrol.ha.transport uses it for every send, the sender
process, hacontrol.ha.beat_child, for its periodic heartbeats).

``SharedBoard`` is a few 64-bit slots in a memfd both processes map (no lock: each slot has one
writer). Sequence numbers: the daemon takes odd numbers, the sender process even ones, each the
smallest of its parity above both its own last one and the other's (read from the board), so
the numbers stay unique per epoch and grow on each side; two copies sent at the same moment may
arrive swapped, which the receiver's replay window (64) accepts. The sender process also
publishes its counters there for the daemon's status and metrics (``SLOTS``).
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct

from hacontrol.ha.packet import Message, encode

__all__ = ["SLOTS", "SharedBoard", "next_seq", "stamp"]

# slot -> meaning; the per-path sent counters follow, one per peer path (at most MAX_PATHS)
SLOTS = (
    "daemon_seq", "child_seq", "ready", "sent", "late_max_us", "paused", "pauses",
    "pause_age_us", "errors", "stopped_skips",
)  # fmt: skip
MAX_PATHS = 16
_U64 = struct.Struct("<Q")


def stamp(
    msg: Message, *, epoch: int, seq: int, nonce: bytes, echo: bytes, key: bytes
) -> bytes:
    """``msg`` with this sender's header fields, encoded and MAC'd (hacontrol.ha.packet)."""
    stamped = dataclasses.replace(msg, epoch=epoch, seq=seq, nonce=nonce, echo=echo)
    return encode(stamped, key)


def next_seq(own: int, other: int, parity: int) -> int:
    """The smallest number of ``parity`` (0 even, 1 odd) above both ``own`` and ``other``."""
    n = max(own, other) + 1
    return n if n % 2 == parity else n + 1


class SharedBoard:
    """The slots in a memfd (``create`` in the daemon, ``attach`` in the sender process)."""

    SIZE = 8 * (len(SLOTS) + MAX_PATHS)

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.mem = mmap.mmap(fd, self.SIZE)

    @classmethod
    def create(cls) -> SharedBoard:
        fd = os.memfd_create("hacontrol-beat", 0)
        os.ftruncate(fd, cls.SIZE)
        return cls(fd)

    def get(self, slot: str) -> int:
        return self.at(SLOTS.index(slot))

    def set(self, slot: str, value: int) -> None:
        self.put(SLOTS.index(slot), value)

    def at(self, i: int) -> int:
        value: int = _U64.unpack_from(self.mem, 8 * i)[0]
        return value

    def put(self, i: int, value: int) -> None:
        _U64.pack_into(self.mem, 8 * i, min(max(0, value), 2**64 - 1))

    def path_sent(self, i: int) -> int:
        return self.at(len(SLOTS) + i)

    def add_path_sent(self, i: int) -> None:
        if i < MAX_PATHS:
            self.put(len(SLOTS) + i, self.path_sent(i) + 1)

    def take_seq(self, mine: str, other: str, parity: int) -> int:
        """The next sequence number for the writer of slot ``mine`` (stored there)."""
        seq = next_seq(self.get(mine), self.get(other), parity)
        self.set(mine, seq)
        return seq

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)
