"""The VRRPv3 codec against advertisements captured from the real keepalived 2.2.7 (golden bytes:
tcpdump -xx in a namespace, see the comment of each vector), every decode error, the legacy
unicast checksum, and hypothesis fuzzing (the decoder raises nothing but VrrpError)."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.ha import vrrp_packet as vp

A4 = ipaddress.IPv4Address
A6 = ipaddress.IPv6Address

# keepalived 2.2.7, vrrp_version 3, vrid 51, priority 150, advert_int 1, two VIPs, multicast;
# captured with tcpdump -xx from 192.0.2.11 to 224.0.0.18 (tcpdump -vv decoded it, checksum ok)
KA_V4 = bytes.fromhex("31339602" "0064a92d" "c0000264" "c6336401")
# keepalived 2.2.7, vrid 53, priority 200, advert_int 0.2, VIP 2001:db8::100, ff02::12
KA_V6 = bytes.fromhex("3135c801" "00148103" "20010db8000000000000000000000100")
KA_V6_SRC = A6("fe80::401a:77ff:feeb:a1d4")

GOLDEN = [
    ("ipv4 multicast", KA_V4, A4("192.0.2.11"), vp.GROUP4,
     vp.Advert(51, 150, 100, (A4("192.0.2.100"), A4("198.51.100.1")))),
    ("ipv6 multicast", KA_V6, KA_V6_SRC, vp.GROUP6,
     vp.Advert(53, 200, 20, (A6("2001:db8::100"),))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "wire", "src", "dst", "adv"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_keepalived_bytes_decode_and_encode_identically(
    name: str, wire: bytes, src: vp.Address, dst: vp.Address, adv: vp.Advert
) -> None:
    assert vp.decode(wire, src, dst) == adv
    assert vp.encode(adv, src, dst) == wire


def test_unicast_checksum_covers_the_peer_address() -> None:
    adv = vp.Advert(52, 100, 50, (A4("192.0.2.101"),))
    src, dst = A4("192.0.2.11"), A4("192.0.2.12")
    wire = vp.encode(adv, src, dst)
    assert vp.decode(wire, src, dst) == adv
    with pytest.raises(vp.VrrpError) as e:  # the same bytes, another destination: refused
        vp.decode(wire, src, A4("192.0.2.13"))
    assert e.value.reason == "checksum"


def test_legacy_unicast_checksum_over_the_group_is_accepted_and_marked() -> None:
    adv = vp.Advert(52, 100, 50, (A4("192.0.2.101"),))
    src, dst = A4("192.0.2.11"), A4("192.0.2.12")
    legacy = vp.encode(adv, src, vp.GROUP4)  # keepalived < 2.1 summed over 224.0.0.18
    got = vp.decode(legacy, src, dst)
    assert got.legacy_sum and got.vrid == 52


def _resum(msg: bytes, src: vp.Address, dst: vp.Address) -> bytes:
    z = msg[:6] + b"\0\0" + msg[8:]
    return z[:6] + struct.pack("!H", vp.checksum(src, dst, z)) + z[8:]


BAD = [
    ("short", KA_V4[:7]),
    ("version", _resum(b"\x21" + KA_V4[1:], A4("192.0.2.11"), vp.GROUP4)),
    ("type", _resum(b"\x32" + KA_V4[1:], A4("192.0.2.11"), vp.GROUP4)),
    ("length", _resum(KA_V4[:3] + b"\x03" + KA_V4[4:], A4("192.0.2.11"), vp.GROUP4)),
    ("checksum", KA_V4[:8] + b"\xc0\x00\x02\x65" + KA_V4[12:]),
]


@pytest.mark.parametrize(("reason", "wire"), BAD, ids=[b[0] for b in BAD])
def test_decode_refuses_with_a_stable_reason(reason: str, wire: bytes) -> None:
    with pytest.raises(vp.VrrpError) as e:
        vp.decode(wire, A4("192.0.2.11"), vp.GROUP4)
    assert e.value.reason == reason


def test_trailing_padding_is_ignored() -> None:
    assert vp.decode(KA_V4 + b"\0\0", A4("192.0.2.11"), vp.GROUP4).vrid == 51


@pytest.mark.parametrize(
    "adv",
    [vp.Advert(0, 1, 100, ()), vp.Advert(1, 256, 100, ()), vp.Advert(1, 1, 0, ()),
     vp.Advert(1, 1, 4096, ()), vp.Advert(1, 1, 100, (A6("2001:db8::1"),))],
)  # fmt: skip
def test_encode_refuses_out_of_range_fields(adv: vp.Advert) -> None:
    with pytest.raises(ValueError):
        vp.encode(adv, A4("192.0.2.11"), vp.GROUP4)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_decoder_raises_only_vrrp_error(data: bytes, v6: bool) -> None:
    src, dst = (KA_V6_SRC, vp.GROUP6) if v6 else (A4("192.0.2.11"), vp.GROUP4)
    with contextlib.suppress(vp.VrrpError):
        vp.decode(data, src, dst)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 255), st.integers(0, 255), st.integers(1, 4095),
       st.lists(st.integers(0, 2**32 - 1), max_size=8))  # fmt: skip
def test_roundtrip(vrid: int, prio: int, cs: int, addrs: list[int]) -> None:
    adv = vp.Advert(vrid, prio, cs, tuple(A4(a) for a in addrs))
    src, dst = A4("192.0.2.11"), A4("198.51.100.7")
    assert vp.decode(vp.encode(adv, src, dst), src, dst) == adv
