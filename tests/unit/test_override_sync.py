"""Override replication, the pure parts and the sender's steps: the section codec (round trip,
every refusal, fuzzing), the set digest, chunking, the Lamport rules of ``merge_remote`` across a
restart, and two ``Replicator`` s joined by the real packet codec on a hand-moved clock: push,
anti-entropy after a partition, conflicting writes, pacing bounds, refusals counted."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.model import Config, RealServer, ServiceConfig
from hacontrol.overrides import wire
from hacontrol.overrides.core import MAX_RECORDS, Override, Version
from hacontrol.overrides.manager import OverrideManager
from hacontrol.overrides.store import OverrideStore

KEY = b"override sync test key 00000001"
RS = [f"198.51.100.{i}:80" for i in range(1, 4)]


def rec(server: str, action: Any, counter: int, node: str = "a", **kw: Any) -> Override:
    if action == "drain":
        kw.setdefault("deadline_at", 2000.5)
    return Override("web", server, action, Version(counter, node), 1000.25, **kw)


DRAIN = rec(RS[0], "drain", 3)
WEIGHT = rec("[2001:db8::1]:443", "weight", 4, "b", weight=65535)
UTF8 = Override("serviço-é", RS[1], "disable", Version(2**62 - 1, "nœud"), 0.0)


# -- the section codec ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "records",
    [(), (DRAIN,), (DRAIN, WEIGHT, UTF8), (rec(RS[2], "clear", 1), rec(RS[1], "enable", 2))],
)
@pytest.mark.parametrize("last", [True, False])
def test_section_round_trip(records: tuple[Override, ...], last: bool) -> None:
    sec = wire.Section(wire.set_digest(records), len(records), 9, last, records)
    assert wire.decode_section(wire.encode_section(sec)) == sec


def raw_record(service: bytes = b"web", server: bytes = RS[0].encode(), node: bytes = b"a",
               code: int = 2, counter: int = 1, set_at: float = 1.0, tail: bytes = b"") -> bytes:
    def t(b: bytes) -> bytes:
        return bytes([len(b)]) + b

    return t(service) + t(server) + t(node) + struct.pack("!BQd", code, counter, set_at) + tail


def head(n: int, flags: int = 1, fmt: int = 1, total: int = 0, counter: int = 0) -> bytes:
    return struct.pack("!BB16sIQB", fmt, flags, bytes(16), total, counter, n)


@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b"", "malformed", "0 bytes"),
        (head(0)[:-1], "malformed", "bytes"),
        (head(0, fmt=2), "format", "format 2"),
        (head(0, flags=0x02), "malformed", "flags"),
        (head(0, total=MAX_RECORDS + 1), "malformed", "total"),
        (head(0, counter=2**62), "malformed", "counter"),
        (head(33) + raw_record() * 33, "too_many", "33"),
        (head(1), "malformed", "past the end"),
        (head(1) + raw_record()[:-3], "malformed", "past the end"),
        (head(0) + b"\x00", "malformed", "trailing"),
        (head(1) + raw_record() + b"\x00", "malformed", "trailing"),
        (head(2) + raw_record() * 2, "malformed", "twice"),
        (head(1) + raw_record(service=b""), "malformed", "service length 0"),
        (head(1) + raw_record(server=b"x" * 65), "malformed", "server length 65"),
        (head(1) + raw_record(node=b"\xff\xfe"), "malformed", "not utf-8"),
        (head(1) + raw_record(code=0), "bad_record", "action 0"),
        (head(1) + raw_record(code=6), "bad_record", "action 6"),
        (head(1) + raw_record(counter=0), "bad_record", "counter 0"),
        (head(1) + raw_record(counter=2**62), "bad_record", "counter"),
        (head(1) + raw_record(set_at=float("nan")), "bad_record", "set_at"),
        (head(1) + raw_record(set_at=-1.0), "bad_record", "set_at"),
        (head(1) + raw_record(server=b"web:80"), "bad_record", "canonical"),
        (head(1) + raw_record(server=b"198.051.100.1:80"), "bad_record", "canonical"),
        (head(1) + raw_record(server=b"198.51.100.1:0"), "bad_record", "canonical"),
        (head(1) + raw_record(server=b"[2001:DB8::1]:80"), "bad_record", "canonical"),
        (head(1) + raw_record(service=b"s" * 129), "bad_record", "1..128"),
        (head(1) + raw_record(code=4, tail=struct.pack("!I", 65536)), "bad_record", "weight"),
        (head(1) + raw_record(code=1, tail=struct.pack("!d", float("inf"))), "bad_record",
         "deadline_at"),
        (head(1) + raw_record(code=1), "malformed", "past the end"),  # drain without deadline
    ],
)
def test_section_refusals(data: bytes, reason: str, detail: str) -> None:
    with pytest.raises(wire.WireError) as e:
        wire.decode_section(data)
    assert e.value.reason == reason and e.value.reason in wire.REASONS
    assert detail in str(e.value)


@pytest.mark.parametrize(
    "bad",
    [
        dataclasses.replace(DRAIN, server="web:80"),
        dataclasses.replace(DRAIN, set_at=float("inf")),
        dataclasses.replace(DRAIN, deadline_at=float("nan")),
        dataclasses.replace(DRAIN, version=Version(2**62, "a")),
        dataclasses.replace(DRAIN, version=Version(1, "n" * 65)),
    ],
)
def test_encode_refuses_what_decode_would(bad: Override) -> None:
    with pytest.raises(ValueError):
        wire.encode_record(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_fuzz_section(data: bytes) -> None:
    for candidate in (data, head(1) + data, head(2) + raw_record() + data):
        try:
            sec = wire.decode_section(candidate)
        except wire.WireError as e:
            assert e.reason in wire.REASONS
        else:
            assert wire.decode_section(wire.encode_section(sec)) == sec


def test_set_digest_is_over_identities() -> None:
    a = [DRAIN, WEIGHT, UTF8]
    assert wire.set_digest(a) == wire.set_digest(reversed(a))
    assert wire.set_digest(a) == wire.set_digest([dataclasses.replace(DRAIN, set_at=5.0),
                                                  WEIGHT, UTF8])  # fmt: skip
    assert wire.set_digest(a) != wire.set_digest([rec(RS[0], "drain", 4), WEIGHT, UTF8])
    assert wire.set_digest(a) != wire.set_digest(a[:2])
    assert len(wire.set_digest([])) == wire.SET_DIGEST_LEN


def test_digest_sum_follows_changes() -> None:
    d = wire.DigestSum([DRAIN, WEIGHT])
    assert d.digest() == wire.set_digest([WEIGHT, DRAIN])
    newer = rec(RS[0], "clear", 9, "b")  # replaces DRAIN (same server)
    d.put(newer)
    assert d.digest() == wire.set_digest([newer, WEIGHT])
    d.put(UTF8)
    assert d.digest() == wire.set_digest([UTF8, newer, WEIGHT])
    assert wire.DigestSum().digest() == wire.set_digest([]) == bytes(wire.SET_DIGEST_LEN)


@pytest.mark.parametrize(
    ("n", "budget", "sizes"),
    [
        (0, 1200, []),
        (1, 1200, [1]),
        (32, 5000, [32]),
        (33, 5000, [32, 1]),
        (100, 1200, [27, 27, 27, 19]),  # 43-byte records: 31 + 27 * 43 <= 1200 < 31 + 28 * 43
        (100, 31 + 27 * 43, [27, 27, 27, 19]),
        (5, 31 + 43, [1, 1, 1, 1, 1]),
        (5, 31 + 2 * 43 - 1, [1, 1, 1, 1, 1]),
    ],
)
def test_pack(n: int, budget: int, sizes: list[int]) -> None:
    recs = [rec(f"198.51.100.{100 + i % 100}:{1000 + i // 100}", "disable", 10 + i)
            for i in range(n)]  # fmt: skip
    assert {len(wire.encode_record(o)) for o in recs} <= {43}
    chunks = wire.pack(recs, budget)
    assert [len(c) for c in chunks] == sizes
    assert [o for c in chunks for o in c] == recs
    for c in chunks:
        assert len(wire.encode_section(wire.Section(bytes(16), 0, 0, True, tuple(c)))) <= budget


def test_pack_refuses_a_record_over_the_budget() -> None:
    with pytest.raises(ValueError, match="budget"):
        wire.pack([DRAIN], 40)


# -- Lamport counters in the manager --------------------------------------------------------

WEB = ServiceConfig(
    name="web", vip=ipaddress.ip_address("192.0.2.10"), port=80,
    real_servers=tuple(RealServer(ipaddress.ip_address(s.split(":")[0]), 80) for s in RS),
)  # fmt: skip
CFG = Config(node_name="a", services=(WEB,))


async def no_conns(pairs: Any) -> dict[Any, int]:
    return {}


def manager(node: str, state: Path | None = None) -> OverrideManager:
    m = OverrideManager(node, lambda: CFG, store=None, mark_dirty=lambda keys: None,
                        kernel=lambda: None, conns=no_conns, wall=lambda: 1000.0)  # fmt: skip
    if state is not None:
        m.load(OverrideStore(state))
    return m


def test_remote_record_advances_the_counter_and_survives_a_restart(tmp_path: Path) -> None:
    a = manager("a", tmp_path)
    assert a.merge_remote([rec(RS[0], "drain", 41, "b")], "b") == (1, 0)
    assert a.counter == 41
    a2 = manager("a", tmp_path)  # a restart: the file holds the counter and the record
    assert a2.counter == 41 and a2.records[("web", RS[0])].version == Version(41, "b")
    made = a2.command("clear", "web", RS[0])
    assert made[0].version == Version(42, "a")  # a new local change wins over what it saw
    assert a2.merge_remote([rec(RS[0], "drain", 41, "b")], "b") == (0, 0)  # old: ignored


def test_observed_counter_is_passed() -> None:
    a = manager("a")
    a.observe(500)
    assert a.command("disable", "web", RS[1])[0].version.counter == 501


def test_merge_remote_bounds_the_set() -> None:
    a = manager("a")
    a.records = {("s", f"x{i}"): rec(f"x{i}", "clear", 1) for i in range(MAX_RECORDS - 2)}
    incoming = [rec(RS[i], "disable", 5, "b") for i in range(3)]
    assert a.merge_remote(incoming, "b", save=False) == (2, 1)
    assert len(a.records) == MAX_RECORDS
