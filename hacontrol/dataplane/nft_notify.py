"""nf_tables netlink notifications: parsing a datagram, and telling a foreign change to our table.

The kernel multicasts every committed nftables change to the NFNLGRP_NFTABLES group of the
NETLINK_NETFILTER family: one message per object changed (NEWTABLE, DELRULE, DELSETELEM...; the
table's name is attribute 1 of every kind: NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE), then one NEWGEN
closing the transaction, whose NFTA_GEN_PROC_PID and NFTA_GEN_PROC_NAME name the task that
committed it (its thread id: a libnftables call on one of the daemon's threads gives that
thread's id). ``parse`` reads only that much of a datagram (the message type, the family, the
table-name attribute, the NEWGEN's pid and name); anything malformed is refused (``Parsed.error``)
with the notes read before it, never an exception. ``Tracker`` gathers the messages touching our
table until the NEWGEN and says whether someone else made them (a reason) or we did (``own``).
Pure: no sockets, no event loop (the watcher is ``hacontrol.dataplane.nft_watch``).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

NFNL_SUBSYS_NFTABLES = 10
NFPROTO_INET = 1
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
NFGEN_HDR = struct.Struct("=BBH")  # family, version, res_id
NLA_HDR = struct.Struct("=HH")  # len, type
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
ATTR_TABLE = 1  # the table name, in every object message kind
GEN_PROC_PID, GEN_PROC_NAME = 2, 3
NEWGEN = 15
MESSAGES = {
    0: "newtable", 2: "deltable", 3: "newchain", 5: "delchain", 6: "newrule", 8: "delrule",
    9: "newset", 11: "delset", 12: "newsetelem", 14: "delsetelem", 15: "newgen", 18: "newobj",
    20: "delobj", 22: "newflowtable", 24: "delflowtable", 26: "destroytable",
    27: "destroychain", 28: "destroyrule", 29: "destroyset", 30: "destroysetelem",
    31: "destroyobj", 32: "destroyflowtable",
}  # fmt: skip


@dataclass(frozen=True)
class Note:
    """One nf_tables notification: its kind, the table's family and name (None: no table, as a
    NEWGEN), and for a NEWGEN the committing task's pid and command name (None when absent)."""

    msg: str
    family: int
    table: str | None
    pid: int | None = None
    proc: str | None = None


@dataclass
class Parsed:
    notes: list[Note] = field(default_factory=list)
    error: str | None = None  # why the rest of the datagram was refused


def _attrs(body: bytes) -> dict[int, bytes] | str:
    """The top-level attributes of a message body (first of each type), or why not."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + NLA_HDR.size <= len(body):
        length, kind = NLA_HDR.unpack_from(body, pos)
        if length < NLA_HDR.size or pos + length > len(body):
            return f"attribute at {pos}: length {length} past the message"
        out.setdefault(kind & NLA_TYPE_MASK, body[pos + NLA_HDR.size : pos + length])
        pos += (length + 3) & ~3
    return out


def _string(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _note(kind: str, body: bytes) -> Note | str:
    if len(body) < NFGEN_HDR.size:
        return f"{kind}: no nfgenmsg header"
    family = body[0]
    attrs = _attrs(body[NFGEN_HDR.size :])
    if isinstance(attrs, str):
        return f"{kind}: {attrs}"
    if kind == "newgen":
        raw_pid = attrs.get(GEN_PROC_PID)
        pid = struct.unpack(">I", raw_pid)[0] if raw_pid is not None and len(raw_pid) == 4 else None
        return Note(kind, family, None, pid=pid, proc=_string(attrs.get(GEN_PROC_NAME)))
    return Note(kind, family, _string(attrs.get(ATTR_TABLE)))


def parse(data: bytes) -> Parsed:
    """The nf_tables notifications in one netlink datagram (other messages skipped)."""
    out = Parsed()
    pos = 0
    while pos < len(data):
        if len(data) - pos < NLMSG_HDR.size:
            out.error = f"at {pos}: {len(data) - pos} bytes, less than a netlink header"
            return out
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > len(data):
            out.error = f"at {pos}: message length {length} past the datagram ({len(data)})"
            return out
        body = data[pos + NLMSG_HDR.size : pos + length]
        pos += (length + 3) & ~3
        if mtype == NLMSG_OVERRUN:
            out.error = "overrun"
            return out
        if mtype >> 8 != NFNL_SUBSYS_NFTABLES or (kind := MESSAGES.get(mtype & 0xFF)) is None:
            continue  # not a change notification (NLMSG_DONE, an ack, another subsystem)
        note = _note(kind, body)
        if isinstance(note, str):
            out.error = f"at {pos - length}: {note}"
            return out
        out.notes.append(note)
    return out


class Tracker:
    """Follows transactions: the messages touching our tables (``family``, a name ``mine``
    accepts) until the NEWGEN that closes them; ``own(pid)`` says whether a committing task is
    ours."""

    def __init__(
        self, mine: Callable[[str], bool], family: int, own: Callable[[int], bool]
    ) -> None:
        self.mine = mine
        self.family = family
        self.own = own
        self._touched: Counter[str] = Counter()  # kinds of message, at most len(MESSAGES)
        self.own_seen = 0  # transactions touching our table that were ours
        self.foreign_seen = 0  # ... that were someone else's

    def feed(self, note: Note) -> str | None:
        """The reason, when ``note`` closes a foreign transaction that touched our table."""
        if note.msg != "newgen":
            if note.table is not None and note.family == self.family and self.mine(note.table):
                self._touched[note.msg] += 1
            return None
        touched, self._touched = self._touched, Counter()
        if not touched:
            return None
        if note.pid is not None and self.own(note.pid):
            self.own_seen += 1
            return None
        self.foreign_seen += 1
        what = ", ".join(f"{k} x{n}" for k, n in sorted(touched.items()))
        who = f"{note.proc or '?'} (pid {note.pid if note.pid is not None else '?'})"
        return f"{what} by {who}"
