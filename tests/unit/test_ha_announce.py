"""Gratuitous ARP / unsolicited NA frames against hand-computed bytes, and the burst logic."""

from __future__ import annotations

import ipaddress

import pytest

from hacontrol.ha import announce
from hacontrol.ha.announce import (
    Announcer,
    format_mac,
    garp_frame,
    icmpv6_checksum,
    inet_checksum,
    na_message,
    parse_mac,
)
from hacontrol.metrics import Metrics
from hacontrol.model import AnnounceConfig, VipConfig

MAC = bytes.fromhex("02000000000b")
V4 = ipaddress.IPv4Address("198.51.100.10")
V6 = ipaddress.IPv6Address("2001:db8:100::10")


def test_mac_parse_and_format() -> None:
    assert parse_mac("02:00:00:00:00:0b") == MAC
    assert format_mac(MAC) == "02:00:00:00:00:0b"
    for bad in ("02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.000b", ""):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_garp_frame_bytes() -> None:
    expected = bytes.fromhex(
        "ffffffffffff"  # Ethernet destination: broadcast
        "02000000000b"  # Ethernet source: the interface's MAC
        "0806"  # EtherType ARP
        "0001"  # htype Ethernet
        "0800"  # ptype IPv4
        "06"
        "04"  # hlen, plen
        "0001"  # op: request
        "02000000000b"  # sender MAC
        "c633640a"  # sender IP 198.51.100.10
        "000000000000"  # target MAC: zero (RFC 5227)
        "c633640a"  # target IP = sender IP: gratuitous
    )
    assert garp_frame(MAC, V4) == expected
    assert len(expected) == 42


def test_garp_rejects_bad_mac() -> None:
    with pytest.raises(ValueError):
        garp_frame(b"\x01\x02", V4)


def test_inet_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2 -> checksum 220d
    assert inet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    # odd length pads with a zero byte
    assert inet_checksum(b"\x01") == inet_checksum(b"\x01\x00")


def test_na_message_bytes() -> None:
    # Checksum by hand, 16-bit words of pseudo-header + message:
    #   src 2001:db8:100::10 (twice: source and target) 2*(2001+0db8+0100+0010) = 5d92
    #   dst ff02::1 = ff02+0001 = ff03; length 0020; next header 003a
    #   type/code 8800; flags 2000 (override); option 0201 0200 0000 000b = 040c
    #   5d92+ff03+0020+003a+8800+2000+040c = 208fb -> fold 08fb+2 = 08fd -> ~ = f702
    expected = bytes.fromhex(
        "88"  # type 136: neighbour advertisement
        "00"  # code
        "f702"  # checksum
        "20000000"  # flags: R=0 S=0 O=1, reserved
        "20010db8010000000000000000000010"  # target 2001:db8:100::10
        "02"  # option: target link-layer address
        "01"  # length 1 (8 bytes)
        "02000000000b"  # the MAC
    )
    assert na_message(MAC, V6) == expected
    assert len(expected) == 32


def test_na_router_flag_and_checksum_for_other_source() -> None:
    msg = na_message(MAC, V6, router=True, src=ipaddress.IPv6Address("fe80::1"))
    assert msg[4:8] == bytes.fromhex("a0000000")  # R + O, never S
    # a message carrying its own checksum sums to zero with the pseudo-header
    assert icmpv6_checksum(ipaddress.IPv6Address("fe80::1"), announce.ALL_NODES, msg) == 0


def _vips() -> list[VipConfig]:
    return [
        VipConfig(ipaddress.IPv4Interface("198.51.100.10/24"), "eth0"),
        VipConfig(ipaddress.IPv6Interface("2001:db8:100::10/64"), "eth0"),
    ]


async def test_burst_counts_rounds_and_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str]] = []
    sleeps: list[float] = []

    def fake_send(self: Announcer, socks: object, vip: VipConfig) -> None:
        sent.append((vip.interface, str(vip.address.ip)))

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    monkeypatch.setattr(Announcer, "_send_one", fake_send)
    m = Metrics()
    a = Announcer(_vips(), AnnounceConfig(count=3, interval=0.05), m, sleep=fake_sleep)
    assert await a.burst() == 6
    assert sleeps == [0.05, 0.05]  # between rounds, not after the last
    assert len(sent) == 6
    assert m.announcements.labels(family="ipv4")._value.get() == 3
    assert m.announcements.labels(family="ipv6")._value.get() == 3
    assert await a.once() == 2
    assert a.sent_total == 8


async def test_send_errors_are_counted_out_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_send(self: Announcer, socks: object, vip: VipConfig) -> None:
        if vip.address.version == 6:
            raise OSError(19, "No such device")

    async def no_sleep(s: float) -> None:
        return None

    monkeypatch.setattr(Announcer, "_send_one", fake_send)
    m = Metrics()
    a = Announcer(_vips(), AnnounceConfig(count=2, interval=0.01), m, sleep=no_sleep)
    assert await a.burst() == 2
    assert m.announcements.labels(family="ipv6")._value.get() == 0


async def test_missing_interface_is_an_error_value() -> None:
    vip = VipConfig(ipaddress.IPv4Interface("198.51.100.10/24"), "hc-no-such-if0")
    a = Announcer([vip], AnnounceConfig(count=1))
    assert await a.burst() == 0  # no such device (or no CAP_NET_RAW): logged, not raised


async def test_refresh_zero_repeats_once_then_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    from hacontrol.ha.announce import REPEAT_AFTER

    sleeps: list[float] = []
    sent: list[VipConfig] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)

    monkeypatch.setattr(Announcer, "_send_one", lambda self, socks, vip: sent.append(vip))
    a = Announcer(_vips(), AnnounceConfig(refresh=0), sleep=fake_sleep)
    await a.refresh_forever()
    assert sleeps == [REPEAT_AFTER] and len(sent) == 2  # the repeat round, both VIPs; no refresh


def test_vip_group_is_a_vip_manager_and_describes_without_io() -> None:
    from hacontrol.ha.interfaces import VipManager
    from hacontrol.ha.vip import VipGroup

    group: VipManager = VipGroup(_vips(), AnnounceConfig())
    assert group.describe() == [
        {"address": "198.51.100.10/24", "interface": "eth0", "present": False, "lease_left": None},
        {
            "address": "2001:db8:100::10/64",
            "interface": "eth0",
            "present": False,
            "lease_left": None,
        },
    ]


@pytest.mark.parametrize(
    ("lease", "life"), [(None, 0xFFFFFFFF), (3.0, 3), (2.5, 3), (0.2, 1), (1e12, 0xFFFFFFFE)]
)
def test_lease_to_kernel_lifetime(lease: float | None, life: int) -> None:
    from hacontrol.ha.vip import lifetime

    assert lifetime(lease) == life


@pytest.mark.parametrize("lease", [0.0, -1.0, float("nan")])
def test_bad_lease_is_refused(lease: float) -> None:
    from hacontrol.ha.vip import lifetime

    with pytest.raises(ValueError):
        lifetime(lease)


async def test_refresh_repeats_one_round_per_period(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from hacontrol.ha.announce import REPEAT_AFTER

    rounds: list[int] = []
    sleeps: list[float] = []

    def fake_send(self: Announcer, socks: object, vip: VipConfig) -> None:
        rounds.append(len(sleeps))

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) > 3:
            raise asyncio.CancelledError

    monkeypatch.setattr(Announcer, "_send_one", fake_send)
    a = Announcer(_vips(), AnnounceConfig(refresh=30), sleep=fake_sleep)
    with pytest.raises(asyncio.CancelledError):
        await a.refresh_forever()
    # the repeat past the neighbour locktime, then one round (both VIPs) per period
    assert sleeps == [REPEAT_AFTER, 30, 30, 30]
    assert rounds == [1, 1, 2, 2, 3, 3]


async def test_vip_group_refresh_runs_while_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """take() starts the periodic refresh, release() stops it (netlink replaced by fakes)."""
    import asyncio

    from hacontrol.clock import FakeClock
    from hacontrol.ha.vip import VipGroup

    calls: list[str] = []
    refreshing = asyncio.Event()

    class FakeAnnouncer(Announcer):
        async def refresh_forever(self) -> None:
            refreshing.set()
            try:
                await asyncio.Event().wait()
            finally:
                calls.append("refresh stopped")

    async def fake_replace(self: VipGroup, vip: VipConfig, life: int) -> None:
        calls.append(f"replace {vip.address} {life}")

    async def fake_delete(self: VipGroup, vip: VipConfig) -> bool:
        calls.append(f"delete {vip.address}")
        return True

    monkeypatch.setattr(VipGroup, "_replace", fake_replace)
    monkeypatch.setattr(VipGroup, "_delete", fake_delete)
    clock = FakeClock()
    g = VipGroup(_vips(), announcer=FakeAnnouncer(_vips()), clock=clock)
    await g.renew(3)  # nothing held yet: no-op
    assert calls == []
    await g.take(3)
    await asyncio.wait_for(refreshing.wait(), 5)
    assert [d["lease_left"] for d in g.describe()] == [3.0, 3.0]
    clock.advance(1)
    assert [d["lease_left"] for d in g.describe()] == [2.0, 2.0]
    await g.renew(2.5)
    await g.release()
    assert calls == [
        "replace 198.51.100.10/24 3",
        "replace 2001:db8:100::10/64 3",
        "replace 198.51.100.10/24 3",
        "replace 2001:db8:100::10/64 3",
        "refresh stopped",
        "delete 198.51.100.10/24",
        "delete 2001:db8:100::10/64",
    ]
    assert [d["present"] for d in g.describe()] == [False, False]
    await g.close()


def test_vip_group_from_config() -> None:
    from hacontrol.ha.vip import VipGroup
    from hacontrol.model import Endpoint, HAConfig

    ha = HAConfig(
        bind=Endpoint(ipaddress.ip_address("192.0.2.11"), 5405),
        peers=(),
        secret_file="/k",
        vips=tuple(_vips()),
        announce=AnnounceConfig(count=2, interval=0.1, refresh=5),
    )
    g = VipGroup.from_config(ha, Metrics())
    assert g.vips == tuple(_vips()) and g.announcer.config.count == 2
