"""Resolve a generic netlink family by name (CTRL_CMD_GETFAMILY): how the daemon loads ``ip_vs``.

Asking the kernel's generic netlink controller for a family it does not know makes it try
``request_module("net-pf-16-proto-16-family-<NAME>")`` before answering, so resolving ``IPVS``
loads the ``ip_vs`` module on a kernel that has it as a module (ipvsadm relies on the same). The
request needs no privilege and runs no program of ours (the kernel runs its modprobe helper).

``encode_getfamily`` / ``decode_reply`` are pure (golden-tested bytes); ``family_id`` is the one
blocking netlink round trip (call it from a thread in async code).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from hacontrol.dataplane.nlmsg import HDR, NLA, Malformed, align, attributes, messages

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY = 1
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
_GENLHDR = struct.Struct("=BBH")  # cmd, version, reserved


class GenlError(Exception):
    """The controller's answer could not be read (not: the family is unknown)."""


@dataclass(frozen=True)
class FamilyReply:
    """What the controller said: the family id, or the errno it refused with."""

    family_id: int | None
    error: int = 0  # positive errno; ENOENT = no such family (after the autoload attempt)


def encode_getfamily(name: str, seq: int) -> bytes:
    """A CTRL_CMD_GETFAMILY request for ``name`` (NUL-terminated, as the kernel expects)."""
    raw = name.encode() + b"\0"
    attr = NLA.pack(NLA.size + len(raw), CTRL_ATTR_FAMILY_NAME) + raw
    attr += b"\0" * (align(len(attr)) - len(attr))
    body = _GENLHDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr
    return HDR.pack(HDR.size + len(body), GENL_ID_CTRL, NLM_F_REQUEST, seq, 0) + body


def decode_reply(data: bytes, seq: int) -> FamilyReply | None:
    """The answer to request ``seq`` in one received datagram; None if it holds none."""
    try:
        for mtype, _flags, mseq, body in messages(data):
            if mseq != seq:
                continue
            if mtype == NLMSG_ERROR:
                if len(body) < 4:
                    raise GenlError("short NLMSG_ERROR")
                (code,) = struct.unpack_from("=i", body)
                return FamilyReply(None, -code) if code else None  # 0 = a bare ack
            if mtype != GENL_ID_CTRL or len(body) < _GENLHDR.size:
                continue
            if body[0] != CTRL_CMD_NEWFAMILY:
                continue
            return FamilyReply(_family_id(body[_GENLHDR.size :]))
    except Malformed as e:
        raise GenlError(str(e)) from None
    return None


def _family_id(attrs: bytes) -> int:
    for kind, payload in attributes(attrs):
        if kind == CTRL_ATTR_FAMILY_ID and len(payload) >= 2:
            return int(struct.unpack_from("=H", payload)[0])
    raise GenlError("NEWFAMILY reply without CTRL_ATTR_FAMILY_ID")


def family_id(name: str, timeout: float = 10.0) -> int | None:
    """The id of generic netlink family ``name``, or None when the kernel has none (after it
    tried to load a module providing it). Raises OSError / GenlError when the controller cannot
    be asked or answers something unreadable. Blocking: the kernel may run modprobe first."""
    seq = int.from_bytes(os.urandom(4), "little") or 1
    with socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC
    ) as s:
        s.settimeout(timeout)
        s.bind((0, 0))
        s.sendto(encode_getfamily(name, seq), (0, 0))
        for _ in range(16):  # bounded: stray datagrams of another sequence are skipped
            reply = decode_reply(s.recv(65536), seq)
            if reply is None:
                continue
            if reply.family_id is not None:
                return reply.family_id
            if reply.error == errno.ENOENT:
                return None
            raise OSError(
                reply.error, f"genl CTRL_CMD_GETFAMILY {name}: {os.strerror(reply.error)}"
            )
    raise GenlError(f"no answer to CTRL_CMD_GETFAMILY {name} in 16 datagrams")
