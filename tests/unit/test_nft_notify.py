"""The nf_tables notification parser and the transaction tracker, on hand-built netlink bytes:
our table against a foreign one for each message kind, the NEWGEN's committer, and truncated or
garbage datagrams refused (an error, the notes before it kept) without an exception."""

from __future__ import annotations

import struct

import pytest

from hacontrol.dataplane.nft_notify import MESSAGES, NFPROTO_INET, Note, Tracker, parse

OURS = "hacontrol"


def nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def msg(msg_type: int, body: bytes, family: int = NFPROTO_INET, subsys: int = 10) -> bytes:
    payload = struct.pack("=BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), (subsys << 8) | msg_type, 0, 0, 0) + payload


def obj(msg_type: int, table: str, family: int = NFPROTO_INET) -> bytes:
    # attribute 1 names the table in every kind; a nested attribute after it, as the kernel sends
    return msg(msg_type, nla(1, table.encode() + b"\0") + nla(0x8002, nla(1, b"x\0")), family)


def newgen(pid: int | None, name: str | None = "nft") -> bytes:
    body = nla(0x4001, struct.pack(">I", 7))
    if pid is not None:
        body += nla(2, struct.pack(">I", pid))
    if name is not None:
        body += nla(3, name.encode() + b"\0")
    return msg(15, body, family=0)


KINDS = sorted((t, n) for t, n in MESSAGES.items() if n != "newgen")


@pytest.mark.parametrize(("msg_type", "name"), KINDS)
@pytest.mark.parametrize(
    ("table", "family", "foreign"),
    [(OURS, NFPROTO_INET, True), ("other", NFPROTO_INET, False), (OURS, 2, False)],
    ids=["our-table", "foreign-table", "ip-family-same-name"],
)
def test_each_kind_touching_our_table_by_another_process_is_foreign(
    msg_type: int, name: str, table: str, family: int, foreign: bool
) -> None:
    parsed = parse(obj(msg_type, table, family) + newgen(4242))
    assert parsed.error is None
    assert parsed.notes == [Note(name, family, table), Note("newgen", 0, None, 4242, "nft")]
    tr = Tracker(OURS.__eq__, NFPROTO_INET, own=lambda pid: pid == 1)
    reasons = [tr.feed(n) for n in parsed.notes]
    if foreign:
        assert reasons == [None, f"{name} x1 by nft (pid 4242)"] and tr.foreign_seen == 1
    else:
        assert reasons == [None, None] and tr.foreign_seen == 0


def test_our_own_commit_is_not_foreign_and_a_transaction_is_summed() -> None:
    data = obj(8, OURS) + obj(8, OURS) + obj(14, OURS) + newgen(1, "python3")
    tr = Tracker(OURS.__eq__, NFPROTO_INET, own=lambda pid: pid == 1)
    assert [tr.feed(n) for n in parse(data).notes] == [None] * 4
    assert (tr.own_seen, tr.foreign_seen) == (1, 0)
    tr2 = Tracker(OURS.__eq__, NFPROTO_INET, own=lambda pid: False)
    reasons = [tr2.feed(n) for n in parse(data).notes]
    assert reasons[-1] == "delrule x2, delsetelem x1 by python3 (pid 1)"


def test_a_newgen_without_pid_counts_as_foreign_and_one_alone_is_nothing() -> None:
    tr = Tracker(OURS.__eq__, NFPROTO_INET, own=lambda pid: True)
    notes = parse(newgen(None, None) + obj(2, OURS) + newgen(None, None)).notes
    assert [tr.feed(n) for n in notes] == [None, None, "deltable x1 by ? (pid ?)"]


def test_other_messages_are_skipped() -> None:
    done = struct.pack("=IHHII", 20, 3, 0, 0, 0) + b"\0" * 4
    other_subsys = obj(2, OURS)[:4] + struct.pack("=H", (1 << 8) | 2) + obj(2, OURS)[6:]
    get = msg(1, nla(1, OURS.encode() + b"\0"))  # GETTABLE is no change
    parsed = parse(done + other_subsys + get + obj(2, OURS))
    assert parsed.error is None and parsed.notes == [Note("deltable", NFPROTO_INET, OURS)]


GOOD = obj(2, OURS)


@pytest.mark.parametrize(
    ("data", "kept", "why"),
    [
        (GOOD[:10], 0, "less than a netlink header"),
        (GOOD[:-3], 0, "past the datagram"),
        (GOOD + GOOD[:-1], 1, "past the datagram"),
        (struct.pack("=IHHII", 8, 0xA02, 0, 0, 0), 0, "message length 8"),
        (msg(2, b"")[:18], 0, "past the datagram"),
        (struct.pack("=IHHII", 18, 0xA02, 0, 0, 0) + b"\0\0", 0, "no nfgenmsg header"),
        (msg(2, struct.pack("=HH", 64, 1) + b"ab"), 0, "past the message"),
        (msg(2, struct.pack("=HH", 2, 1)), 0, "length 2 past the message"),
        (GOOD + struct.pack("=IHHII", 16, 4, 0, 0, 0), 1, "overrun"),
        (bytes(range(256)) * 4, 0, "past the datagram"),
    ],
    ids=[
        "short-header",
        "cut-message",
        "second-cut",
        "length-under-header",
        "cut-nfgen",
        "no-nfgen",
        "attr-past-end",
        "attr-too-short",
        "overrun",
        "garbage",
    ],
)
def test_truncated_or_garbage_is_refused_without_exception(
    data: bytes, kept: int, why: str
) -> None:
    parsed = parse(data)
    assert parsed.error is not None and why in parsed.error
    assert len(parsed.notes) == kept


def test_non_utf8_table_name_does_not_raise() -> None:
    parsed = parse(msg(2, nla(1, b"\xff\xfehc\0")))
    assert parsed.error is None and parsed.notes[0].table == "\ufffd\ufffdhc"


def test_empty_datagram_is_nothing() -> None:
    assert parse(b"") == parse(b"") and parse(b"").notes == [] and parse(b"").error is None
