"""Walking netlink answers (pure, no I/O): the messages of one received datagram, and the
attributes of one message body.

Shared by the readers of the kernel's answers that parse them by hand: the generic netlink
controller's (``hacontrol.dataplane.genl``) and nf_tables' acks (``nftnl_codec``). A message
whose length runs past the datagram is ``Malformed`` (a ValueError), raised when the walk reaches
it; an attribute shorter than its own header ends the walk of a body.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
NLA = struct.Struct("=HH")  # nlattr: len, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER


class Malformed(ValueError):
    """A netlink message whose length does not fit the datagram."""


def align(n: int) -> int:
    return (n + 3) & ~3


def messages(data: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """(type, flags, seq, body) of each message in ``data``; trailing bytes shorter than a
    header are ignored."""
    pos = 0
    while pos + HDR.size <= len(data):
        length, mtype, flags, seq, _pid = HDR.unpack_from(data, pos)
        if length < HDR.size or pos + length > len(data):
            raise Malformed(f"truncated netlink message ({length} bytes at {pos} of {len(data)})")
        yield mtype, flags, seq, data[pos + HDR.size : pos + length]
        pos += align(length)


def attributes(body: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute in ``body``, the type without its flag bits."""
    pos = 0
    while pos + NLA.size <= len(body):
        length, kind = NLA.unpack_from(body, pos)
        if length < NLA.size:
            return
        yield kind & NLA_TYPE_MASK, body[pos + NLA.size : pos + length]
        pos += align(length)
