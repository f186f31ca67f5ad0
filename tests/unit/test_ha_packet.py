"""The heartbeat codec: golden vectors (bytes <-> fields), every drop reason, the replay guard, and
hypothesis fuzzing of the decoder (it raises nothing but PacketError). The freshness rules the
nonce and its echo drive are in test_ha_freshness.py.

Regenerate the golden files (only when the wire format changes on purpose, with a version bump):
``python3 tests/unit/test_ha_packet.py --regen``.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacontrol.ha import packet as p
from hacontrol.overrides import wire
from hacontrol.overrides.core import Override, Version
from hacontrol.overrides.store import record_doc, record_of

GOLDEN = Path(__file__).parent / "golden" / "ha"
KEY = b"hacontrol golden vector key 0001"

_DRAIN = Override("web", "192.0.2.2:80", "drain", Version(7, "dir-a"), 1764150000.25,
                  deadline_at=1764150300.25)  # fmt: skip
_WEIGHT = Override("web", "[2001:db8::5]:8080", "weight", Version(6, "dir-b"), 1764149000.5,
                   weight=3)  # fmt: skip
_CLEAR = Override("dns", "198.51.100.53:53", "clear", Version(5, "dir-a"), 1764148000.0)
# the override sections of the overrides messages (type 3), by vector name
SECTIONS: dict[str, wire.Section] = {
    # a command on dir-a pushed at once: one drain record, the packet ends the send
    "overrides_push": wire.Section(
        wire.set_digest([_DRAIN, _WEIGHT, _CLEAR]), 3, 7, True, (_DRAIN,)
    ),
    # the first packet of a full send: not LAST (the receiver does not compare digests yet)
    "overrides_full_first": wire.Section(
        wire.set_digest([_DRAIN, _WEIGHT, _CLEAR]), 3, 7, False, (_CLEAR, _WEIGHT)
    ),
    # the periodic summary: digest, size and counter, no records
    "overrides_summary": wire.Section(wire.set_digest([]), 0, 0, True, ()),
}


def _overrides(name: str, seq: int, nonce: str, echo: str) -> p.Message:
    return p.Message(
        type=p.MsgType.OVERRIDES, node=name.split("/")[0], role=p.WireRole.ACTIVE, priority=150,
        effective_priority=150, epoch=1764150000123, seq=seq, nonce=bytes.fromhex(nonce),
        echo=bytes.fromhex(echo), digest=bytes(range(32)), flags=p.FLAG_VIPS_HELD,
        payload=wire.encode_section(SECTIONS[name.split("/")[1]]),
    )  # fmt: skip


VECTORS: dict[str, p.Message] = {
    "heartbeat_starting_minimal": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="a",
        role=p.WireRole.STARTING,
        priority=1,
        effective_priority=1,
        epoch=1,
        seq=0,
    ),
    "heartbeat_backup": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="dir-b",
        role=p.WireRole.BACKUP,
        priority=100,
        effective_priority=100,
        epoch=1764150000000,
        seq=41,
        nonce=bytes.fromhex("b0b0b0b0b0b0b0b1"),
        echo=bytes.fromhex("a0a0a0a0a0a0a0a1"),
        digest=bytes(range(32)),
        health=(p.ServiceHealth("web", 3, 3),),
    ),
    "heartbeat_active_degraded": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="dir-a",
        role=p.WireRole.ACTIVE,
        priority=150,
        effective_priority=100,
        epoch=1764150000123,
        seq=2**40 + 7,
        nonce=bytes.fromhex("a0a0a0a0a0a0a0a1"),
        echo=bytes.fromhex("b0b0b0b0b0b0b0b1"),
        digest=bytes.fromhex("aa" * 32),
        flags=p.FLAG_VIPS_HELD | p.FLAG_BLOCKED,
        health=(p.ServiceHealth("dns", 0, 2), p.ServiceHealth("web", 2, 3)),
        takeover=p.Takeover(1500, 1498, 1497, 10),
    ),
    "handover_utf8_name": p.Message(
        type=p.MsgType.HANDOVER,
        node="directeur-é",
        role=p.WireRole.ACTIVE,
        priority=254,
        effective_priority=254,
        epoch=2**64 - 1,
        seq=2**64 - 1,
        nonce=b"\xff" * 8,
        echo=b"\xfe" * 8,
        digest=bytes.fromhex("5f" * 32),
        flags=p.FLAG_VIPS_HELD | p.FLAG_YIELDING,
        health=tuple(p.ServiceHealth(f"svc{i:02d}", i, 16) for i in range(16)),
        takeover=p.Takeover(p.NO_TIME, p.NO_TIME, p.NO_TIME, 0),
    ),
    # the nonce handshake of a restart: dir-b's first heartbeat of a new boot has heard nobody
    # (echo all zero); dir-a, active, still echoes dir-b's previous boot; dir-a's next one,
    # sent at once on learning the new nonce, echoes it: from then on dir-b counts dir-a alive
    "heartbeat_first_of_boot": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="dir-b",
        role=p.WireRole.STARTING,
        priority=100,
        effective_priority=100,
        epoch=1764150060000,
        seq=1,
        nonce=bytes.fromhex("b1b2b3b4b5b6b7b8"),
        echo=p.NO_NONCE,
        digest=bytes(range(32)),
        health=(p.ServiceHealth("web", 3, 3),),
    ),
    "heartbeat_echo_stale": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="dir-a",
        role=p.WireRole.ACTIVE,
        priority=150,
        effective_priority=150,
        epoch=1764150000123,
        seq=2**40 + 9,
        nonce=bytes.fromhex("a0a0a0a0a0a0a0a1"),
        echo=bytes.fromhex("b0b0b0b0b0b0b0b1"),
        digest=bytes(range(32)),
        flags=p.FLAG_VIPS_HELD,
        health=(p.ServiceHealth("web", 3, 3),),
        takeover=p.Takeover(60000, 59998, 59997, 10),
    ),
    "heartbeat_echo_fresh": p.Message(
        type=p.MsgType.HEARTBEAT,
        node="dir-a",
        role=p.WireRole.ACTIVE,
        priority=150,
        effective_priority=150,
        epoch=1764150000123,
        seq=2**40 + 10,
        nonce=bytes.fromhex("a0a0a0a0a0a0a0a1"),
        echo=bytes.fromhex("b1b2b3b4b5b6b7b8"),
        digest=bytes(range(32)),
        flags=p.FLAG_VIPS_HELD,
        health=(p.ServiceHealth("web", 3, 3),),
        takeover=p.Takeover(60002, 60000, 59999, 10),
    ),
    "overrides_push": _overrides("dir-a/overrides_push", 2**40 + 11, "a0a0a0a0a0a0a0a1",
                                 "b1b2b3b4b5b6b7b8"),
    "overrides_full_first": _overrides("dir-a/overrides_full_first", 2**40 + 12,
                                       "a0a0a0a0a0a0a0a1", "b1b2b3b4b5b6b7b8"),
    "overrides_summary": dataclasses.replace(
        _overrides("dir-b/overrides_summary", 44, "b1b2b3b4b5b6b7b8", "a0a0a0a0a0a0a0a1"),
        role=p.WireRole.BACKUP, priority=100, effective_priority=100, flags=0,
    ),
}


def to_json(m: p.Message) -> dict[str, Any]:
    d = dataclasses.asdict(m)
    d["type"] = m.type.name.lower()
    d["role"] = m.role.name.lower()
    d["digest"] = m.digest.hex()
    d["nonce"] = m.nonce.hex()
    d["echo"] = m.echo.hex()
    d["health"] = [dataclasses.asdict(s) for s in m.health]
    del d["payload"]
    if m.payload:  # an overrides message: the payload, and the section it holds
        d["payload"] = m.payload.hex()
        sec = wire.decode_section(m.payload)
        d["section"] = {"digest": sec.digest.hex(), "total": sec.total, "counter": sec.counter,
                        "last": sec.last, "records": [record_doc(o) for o in sec.records]}
    return d


def section_of(d: dict[str, Any]) -> wire.Section:
    return wire.Section(bytes.fromhex(d["digest"]), d["total"], d["counter"], d["last"],
                        tuple(record_of(r) for r in d["records"]))  # fmt: skip


def from_json(d: dict[str, Any]) -> p.Message:
    return p.Message(
        type=p.MsgType[d["type"].upper()],
        node=d["node"],
        role=p.WireRole[d["role"].upper()],
        priority=d["priority"],
        effective_priority=d["effective_priority"],
        epoch=d["epoch"],
        seq=d["seq"],
        nonce=bytes.fromhex(d["nonce"]),
        echo=bytes.fromhex(d["echo"]),
        digest=bytes.fromhex(d["digest"]),
        flags=d["flags"],
        health=tuple(p.ServiceHealth(**s) for s in d["health"]),
        takeover=p.Takeover(**d["takeover"]),
        payload=bytes.fromhex(d.get("payload", "")),
    )


def regen() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in [*GOLDEN.glob("*.bin"), *GOLDEN.glob("*.json")]:
        old.unlink()  # a vector of a version the decoder no longer speaks goes with it
    for name, msg in VECTORS.items():
        (GOLDEN / f"{name}.bin").write_bytes(p.encode(msg, KEY))
        doc = {"key": KEY.decode(), "message": to_json(msg)}
        (GOLDEN / f"{name}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


GOLDEN_NAMES = sorted(f.stem for f in GOLDEN.glob("*.bin"))


def test_golden_set_is_complete() -> None:
    assert sorted(VECTORS) == GOLDEN_NAMES


@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_decode_and_reencode(name: str) -> None:
    raw = (GOLDEN / f"{name}.bin").read_bytes()
    doc = json.loads((GOLDEN / f"{name}.json").read_text())
    key = doc["key"].encode()
    expected = from_json(doc["message"])
    assert p.decode(raw, key) == expected
    assert p.encode(expected, key) == raw
    if "section" in doc["message"]:  # the records, field by field
        assert wire.decode_section(expected.payload) == section_of(doc["message"]["section"])
        assert wire.encode_section(section_of(doc["message"]["section"])) == expected.payload


def test_golden_fixed_header_layout() -> None:
    raw = (GOLDEN / "heartbeat_backup.bin").read_bytes()
    assert raw[:4] == b"HACP" and raw[4] == 2 and raw[5] == 1  # magic, version, heartbeat
    assert raw[7] == 1 and raw[8] == 100 and raw[9] == 100  # role backup, priorities
    assert struct.unpack("!QQ", raw[10:26]) == (1764150000000, 41)
    assert raw[26:34] == bytes.fromhex("b0b0b0b0b0b0b0b1")  # the sender's boot nonce
    assert raw[34:42] == bytes.fromhex("a0a0a0a0a0a0a0a1")  # the echo of the peer's
    assert raw[42:74] == bytes(range(32))
    assert raw[90] == 5 and raw[91:96] == b"dir-b"  # name after the 16-byte takeover block
    assert len(raw) == 90 + 1 + 5 + 1 + (1 + 3 + 4) + 32


def test_smallest_packet() -> None:
    raw = (GOLDEN / "heartbeat_starting_minimal.bin").read_bytes()
    assert len(raw) == 125 == p._MIN_LEN


def test_golden_overrides_layout() -> None:
    raw = (GOLDEN / "overrides_push.bin").read_bytes()
    assert raw[5] == 3  # type overrides, same header as a heartbeat
    assert raw[90] == 5 and raw[91:96] == b"dir-a" and raw[96] == 0  # name, no services
    size = struct.unpack("!H", raw[97:99])[0]
    assert len(raw) == 99 + size + 32  # then the payload, then the MAC over all of it
    assert raw[99] == wire.FORMAT and raw[100] == wire.FLAG_LAST
    assert raw[101:117] == SECTIONS["overrides_push"].digest
    assert struct.unpack("!IQB", raw[117:130]) == (3, 7, 1)  # total, counter, records here


def test_payload_room_is_exact() -> None:
    msg = dataclasses.replace(VECTORS["overrides_summary"], node="n" * 64)
    room = p.payload_room(msg.node)
    assert len(p.encode(dataclasses.replace(msg, payload=bytes(room)), KEY)) == p.MAX_PACKET
    with pytest.raises(ValueError, match="MAX_PACKET"):
        p.encode(dataclasses.replace(msg, payload=bytes(room + 1)), KEY)


def test_only_overrides_carry_a_payload() -> None:
    with pytest.raises(ValueError, match="payload"):
        p.encode(dataclasses.replace(VECTORS["heartbeat_backup"], payload=b"x"), KEY)


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_overrides_payload_length_past_the_end(cut: int) -> None:
    body = (GOLDEN / "overrides_push.bin").read_bytes()[:-32]
    with pytest.raises(p.PacketError) as e:
        p.decode(remac(body[:-cut]), KEY)
    assert e.value.reason == "malformed"


def test_overrides_trailing_byte_is_malformed() -> None:
    body = (GOLDEN / "overrides_push.bin").read_bytes()[:-32]
    with pytest.raises(p.PacketError, match="trailing"):
        p.decode(remac(body + b"\x00"), KEY)


def valid() -> bytes:
    return p.encode(VECTORS["heartbeat_active_degraded"], KEY)


def remac(body: bytes) -> bytes:
    return body + p.mac(body, KEY)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (valid()[:40], "truncated"),
        (valid() + bytes(p.MAX_PACKET), "oversized"),
        (b"XACP" + valid()[4:], "bad_magic"),
        (valid()[:4] + b"\x01" + valid()[5:], "bad_version"),  # the format before the nonce
        (valid()[:4] + b"\x03" + valid()[5:], "bad_version"),
        (valid()[:4] + b"\x00" + valid()[5:], "bad_version"),
        (valid()[:-1] + bytes([valid()[-1] ^ 1]), "bad_mac"),
        (valid()[:20] + bytes([valid()[20] ^ 0x80]) + valid()[21:], "bad_mac"),
        (valid()[:-33] + valid()[-32:], "bad_mac"),  # one byte cut from the body
        (remac(valid()[:-32] + b"\x00"), "malformed"),  # trailing byte
        (remac(valid()[:5] + b"\x09" + valid()[6:-32]), "malformed"),  # unknown type
        (remac(valid()[:7] + b"\x07" + valid()[8:-32]), "malformed"),  # unknown role
        (remac(valid()[:8] + b"\x00" + valid()[9:-32]), "malformed"),  # priority 0
        (remac(valid()[:8] + b"\xff" + valid()[9:-32]), "malformed"),  # priority 255
        (remac(valid()[:90] + b"\x00" + valid()[91:-32]), "malformed"),  # empty name
        (remac(valid()[:90] + b"\x41" + valid()[91:-32]), "malformed"),  # name too long
        (remac(valid()[:90] + b"\x05\xff\xfe" + valid()[93:-32]), "malformed"),  # not utf-8
        (remac(valid()[:96] + b"\x11" + valid()[97:-32]), "malformed"),  # 17 services
        (remac(valid()[:96] + b"\x03" + valid()[97:-32]), "malformed"),  # count past the end
    ],
)
def test_drop_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(p.PacketError) as e:
        p.decode(data, KEY)
    assert e.value.reason == reason
    assert e.value.reason in p.DECODE_REASONS


def test_healthy_above_total_is_malformed() -> None:
    raw = valid()
    body = bytearray(raw[:-32])
    i = body.index(b"web") + 3
    body[i : i + 4] = struct.pack("!HH", 4, 3)
    with pytest.raises(p.PacketError, match="healthy > total"):
        p.decode(remac(bytes(body)), KEY)


def test_wrong_key_is_bad_mac() -> None:
    with pytest.raises(p.PacketError) as e:
        p.decode(valid(), b"another key")
    assert e.value.reason == "bad_mac"


def test_unknown_flags_are_ignored_on_receive() -> None:
    body = bytearray(valid()[:-32])
    body[6] |= 0x80
    assert p.decode(remac(bytes(body)), KEY).flags == p.FLAG_VIPS_HELD | p.FLAG_BLOCKED


@pytest.mark.parametrize(
    "change",
    [
        {"node": ""},
        {"node": "x" * 65},
        {"priority": 0},
        {"priority": 255},
        {"effective_priority": 256},
        {"epoch": 2**64},
        {"seq": -1},
        {"digest": b"short"},
        {"nonce": b"short"},
        {"echo": bytes(9)},
        {"flags": 0x40},
        {"health": tuple(p.ServiceHealth(f"s{i}", 0, 0) for i in range(17))},
        {"health": (p.ServiceHealth("s", 2, 1),)},
        {"health": (p.ServiceHealth("", 0, 0),)},
        {"takeover": p.Takeover(-1)},
    ],
)
def test_encode_refuses_out_of_range(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        p.encode(dataclasses.replace(VECTORS["heartbeat_backup"], **change), KEY)


def test_largest_packet_fits() -> None:
    big = dataclasses.replace(
        VECTORS["handover_utf8_name"],
        node="n" * 64,
        health=tuple(p.ServiceHealth(f"{i:02d}" + "s" * 62, 65535, 65535) for i in range(16)),
    )
    raw = p.encode(big, KEY)
    assert len(raw) <= p.MAX_PACKET
    assert p.decode(raw, KEY) == big


# -- replay guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "seen", "verdicts"),
    [
        # strict window: seq must strictly increase
        (1, [(1, 1), (1, 2), (1, 2), (1, 1), (1, 5)], [None, None, "replayed", "replayed", None]),
        # a new epoch resets the sequence; an old epoch is refused
        (64, [(5, 100), (6, 0), (5, 101), (6, 1)], [None, None, "replayed", None]),
        # reordered copies inside the window are accepted once
        (
            64,
            [(1, 10), (1, 9), (1, 9), (1, 12), (1, 11), (1, 10)],
            [None, None, "replayed", None, None, "replayed"],
        ),
        # too old for the window
        (4, [(1, 10), (1, 6), (1, 7)], [None, "replayed", None]),
        # a jump wider than the window clears the history
        (4, [(1, 1), (1, 100), (1, 99), (1, 99)], [None, None, None, "replayed"]),
    ],
)
def test_replay_guard(window: int, seen: list[tuple[int, int]], verdicts: list[str | None]) -> None:
    g = p.ReplayGuard(window)
    assert [g.check("peer", e, s) for e, s in seen] == verdicts
    assert g.check("other", 0, 0) is None  # per peer


def test_replay_guard_window_bounds() -> None:
    with pytest.raises(ValueError):
        p.ReplayGuard(0)


# -- fuzzing ----------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1600))
def test_fuzz_random_bytes(data: bytes) -> None:
    for candidate in (data, b"HACP" + bytes([p.VERSION]) + data):
        try:
            p.decode(candidate, KEY)
        except p.PacketError as e:
            assert e.reason in p.DECODE_REASONS


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(VECTORS)), st.data())
def test_fuzz_mutated_valid_packets(name: str, data: st.DataObject) -> None:
    raw = bytearray(p.encode(VECTORS[name], KEY))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    body = bytes(raw[:cut])
    remaced = body[:-32] + p.mac(body[:-32], KEY) if len(body) > 32 else body
    for candidate in (bytes(raw), body, remaced):
        try:
            m = p.decode(candidate, KEY)
        except p.PacketError as e:
            assert e.reason in p.DECODE_REASONS
        else:
            assert p.decode(p.encode(m, KEY), KEY) == m  # whatever decodes re-encodes


if __name__ == "__main__" and "--regen" in sys.argv:
    regen()
