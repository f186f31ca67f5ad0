"""The tracker's pure decisions: link flags, link state changes, gateway miss counting, echo."""

from __future__ import annotations

import struct

import pytest

from hacontrol.ha.announce import inet_checksum
from hacontrol.ha.interfaces import TrackEvent
from hacontrol.ha.track import (
    IFF_RUNNING,
    IFF_UP,
    FallCounter,
    LinkStates,
    echo_request,
    is_echo_reply,
    link_up,
)


@pytest.mark.parametrize(
    ("flags", "up"),
    [
        (0, False),
        (IFF_UP, False),  # admin up, no carrier
        (IFF_RUNNING, False),  # cannot happen, but not up
        (IFF_UP | IFF_RUNNING, True),
        (IFF_UP | IFF_RUNNING | 0x1000 | 0x10000, True),  # + multicast, lower_up
    ],
)
def test_link_up(flags: int, up: bool) -> None:
    assert link_up(flags) is up


def test_link_states_emit_only_changes_of_tracked_names() -> None:
    ls = LinkStates(["eth0", "eth1"])
    assert ls.update("eth9", "down") is None  # not tracked
    assert ls.update("eth1", "up") == TrackEvent("interface:eth1", False, True, "interface eth1 up")
    assert ls.update("eth1", "up") is None  # no change
    assert ls.update("eth1", "down") == TrackEvent(
        "interface:eth1", True, True, "interface eth1 down"
    )
    assert ls.update("eth1", "missing") == TrackEvent(
        "interface:eth1", True, True, "interface eth1 missing"
    )


def test_link_states_snapshot() -> None:
    ls = LinkStates(["eth0", "eth1", "eth2"])
    evs = ls.snapshot({"eth0": IFF_UP | IFF_RUNNING, "eth1": IFF_UP, "lo": IFF_UP | IFF_RUNNING})
    assert [(e.name, e.failed, e.reason) for e in evs] == [
        ("interface:eth0", False, "interface eth0 up"),
        ("interface:eth1", True, "interface eth1 down"),
        ("interface:eth2", True, "interface eth2 missing"),
    ]
    assert ls.snapshot({"eth0": IFF_UP | IFF_RUNNING, "eth1": IFF_UP}) == []


# (observations, events expected after each): fall = 3
CASES = [
    ("first answer is the initial state", [True], ["reachable"]),
    ("misses below fall say nothing", [True, False, False], ["reachable", None, None]),
    ("fall misses fail once", [False, False, False, False], [None, None, "unreachable", None]),
    (
        "an answer resets the count",
        [True, False, False, True, False, False],
        ["reachable", None, None, None, None, None],
    ),
    (
        "recovery on the first answer",
        [False, False, False, True, True],
        [None, None, "unreachable", "reachable", None],
    ),
]


@pytest.mark.parametrize(("name", "obs", "want"), CASES, ids=[c[0] for c in CASES])
def test_fall_counter(name: str, obs: list[bool], want: list[str | None]) -> None:
    fc = FallCounter("gateway:198.51.100.1", "gateway 198.51.100.1", 3)
    got = []
    for ok in obs:
        ev = fc.observe(ok)
        got.append(None if ev is None else ev.reason.rsplit(" ", 1)[1])
        if ev is not None:
            assert ev.name == "gateway:198.51.100.1" and ev.blocking
            assert ev.failed == (ev.reason == "gateway 198.51.100.1 unreachable")
    assert got == want


def test_fall_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FallCounter("g", "g", 0)


def test_echo_request_v4_bytes() -> None:
    pkt = echo_request(0x1234, 7, b"ab", v6=False)
    # 0800 + csum + 1234 0007 6162: sum 0800+1234+0007+6162 = 7b9d -> ~ = 8462
    assert pkt == bytes.fromhex("08008462123400076162")
    assert inet_checksum(pkt) == 0


def test_echo_request_v6_leaves_checksum_to_kernel() -> None:
    assert echo_request(0x1234, 7, b"ab", v6=True) == bytes.fromhex("80000000123400076162")


def _ipv4(payload: bytes) -> bytes:
    return (
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 1, 0, bytes(4), bytes(4))
        + payload
    )


def test_is_echo_reply() -> None:
    reply4 = _ipv4(struct.pack("!BBHHH", 0, 0, 0, 0x1234, 7))
    assert is_echo_reply(reply4, 0x1234, 7, v6=False)
    assert not is_echo_reply(reply4, 0x1234, 8, v6=False)  # other sequence
    assert not is_echo_reply(reply4, 0x4321, 7, v6=False)  # other pinger
    assert not is_echo_reply(_ipv4(echo_request(0x1234, 7, b"", False)), 0x1234, 7, v6=False)
    assert not is_echo_reply(b"\x45", 0x1234, 7, v6=False)  # truncated
    reply6 = struct.pack("!BBHHH", 129, 0, 0, 0x1234, 7)
    assert is_echo_reply(reply6, 0x1234, 7, v6=True)
    assert not is_echo_reply(reply6[:6], 0x1234, 7, v6=True)
    assert not is_echo_reply(echo_request(0x1234, 7, b"", True), 0x1234, 7, v6=True)


def test_local_tracker_is_a_tracker() -> None:
    import ipaddress

    from hacontrol.ha.interfaces import Tracker
    from hacontrol.ha.track import LocalTracker
    from hacontrol.model import TrackConfig

    cfg = TrackConfig(interfaces=("eth0",), gateway=ipaddress.ip_address("198.51.100.1"))
    tracker: Tracker = LocalTracker(cfg)
    assert tracker is not None


def test_from_config_none_when_nothing_tracked() -> None:
    import ipaddress

    from hacontrol.ha.track import LocalTracker
    from hacontrol.model import Endpoint, HAConfig, TrackConfig

    base = {
        "bind": Endpoint(ipaddress.ip_address("192.0.2.11"), 5405),
        "peers": (),
        "secret_file": "/k",
    }
    assert LocalTracker.from_config(HAConfig(**base)) is None  # type: ignore[arg-type]
    t = LocalTracker.from_config(
        HAConfig(**base, track=TrackConfig(interfaces=("eth0",)))  # type: ignore[arg-type]
    )
    assert t is not None and t.links.names == ("eth0",) and t.gateway is None


HA_YAML = """\
node: {name: dir-a}
ha:
  bind: 192.0.2.11:5405
  peers: [192.0.2.12:5405]
  secret_file: /nonexistent/ha.key
  vips:
    - {address: 198.51.100.10/24, interface: eth0}
    - {address: 192.0.2.1/24, interface: eth1}
    - {address: 198.51.100.11/24, interface: eth0}
"""


@pytest.mark.parametrize(
    ("track", "tracked"),
    [
        ("", ("eth0", "eth1")),  # by default: every VIP's interface, once
        ("  track: {interfaces: [eth2, eth1]}\n", ("eth2", "eth1", "eth0")),
        ("  track: {vip_interfaces: false}\n", ()),
        ("  track: {vip_interfaces: false, interfaces: [eth1]}\n", ("eth1",)),
    ],
)
def test_vip_interfaces_are_tracked_by_default(track: str, tracked: tuple[str, ...]) -> None:
    from hacontrol.config import loads
    from hacontrol.ha.track import LocalTracker, tracked_interfaces

    cfg = loads(HA_YAML + track, check_files=False)
    assert cfg.ha is not None
    assert tracked_interfaces(cfg.ha) == tracked
    t = LocalTracker.from_config(cfg.ha)
    if tracked:
        assert t is not None and t.links.names == tracked
    else:
        assert t is None  # nothing to watch


def test_vip_interfaces_must_be_a_boolean() -> None:
    from hacontrol.config import ConfigError, loads

    with pytest.raises(ConfigError) as e:
        loads(HA_YAML + "  track: {vip_interfaces: maybe}\n", check_files=False)
    assert "ha.track.vip_interfaces" in str(e.value)
