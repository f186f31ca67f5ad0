"""``ha.protocol`` and ``ha.vrrp``: the accepted shapes (integer centiseconds or a duration,
multicast or unicast, the own protocol's peering kept for the switch back) and every refusal,
with its exact ``file:line: field: reason``."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from hacontrol.config import ConfigError, loads
from hacontrol.model import Config, VrrpConfig

HEAD = """\
node: {name: d1}
ha:
  protocol: vrrp3
  vips: [{address: 198.51.100.10/24, interface: eth0}, {address: 2001:db8::10/64, interface: eth0}]
"""  # lines 1-4


def _load(text: str) -> Config:
    return loads(textwrap.dedent(text), source="x.yaml", check_files=False)


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        _load(text)
    return [str(e) for e in ei.value.errors]


GOOD = [
    ("multicast, defaults", "  vrrp: {vrid: 51, interface: eth1}\n",
     VrrpConfig(51, "eth1", 100)),
    ("integer centiseconds", "  vrrp: {vrid: 1, interface: eth1, advert_int: 10}\n",
     VrrpConfig(1, "eth1", 10)),
    ("duration", "  vrrp: {vrid: 255, interface: eth1, advert_int: 250ms}\n",
     VrrpConfig(255, "eth1", 25)),
    ("unicast with source",
     "  vrrp: {vrid: 51, interface: eth1, unicast_peers: [192.0.2.12], source: 192.0.2.11}\n",
     VrrpConfig(51, "eth1", 100, (ipaddress.ip_address("192.0.2.12"),),
                ipaddress.ip_address("192.0.2.11"))),
    ("ipv6 unicast",
     "  vrrp: {vrid: 9, interface: eth1, unicast_peers: ['2001:db8::12']}\n",
     VrrpConfig(9, "eth1", 100, (ipaddress.ip_address("2001:db8::12"),))),
]  # fmt: skip


@pytest.mark.parametrize(("name", "extra", "want"), GOOD, ids=[g[0] for g in GOOD])
def test_accepted(name: str, extra: str, want: VrrpConfig) -> None:
    cfg = _load(HEAD + extra)
    assert cfg.ha is not None and cfg.ha.protocol == "vrrp3" and cfg.ha.vrrp == want
    assert cfg.ha.bind is None and cfg.ha.secret_file is None


def test_own_peering_may_stay_for_the_switch_back() -> None:
    cfg = _load(HEAD + "  vrrp: {vrid: 51, interface: eth1}\n  bind: '192.0.2.11:5405'\n"
                "  peers: ['192.0.2.12:5405']\n  secret_file: /etc/hacontrol/ha.key\n")
    assert cfg.ha is not None and cfg.ha.bind is not None and cfg.ha.peers


def test_lease_derived_from_a_slow_advertisement() -> None:
    cfg = _load(HEAD + "  vrrp: {vrid: 51, interface: eth1, advert_int: 4s}\n")
    assert cfg.ha is not None and cfg.ha.lease == 32.0


def test_default_protocol_is_the_own() -> None:
    cfg = _load("node: {name: d1}\nha: {bind: '192.0.2.11:5405', peers: ['192.0.2.12:5405'], "
                "secret_file: /k}\n")
    assert cfg.ha is not None and cfg.ha.protocol == "hacontrol" and cfg.ha.vrrp is None


BAD = [
    ("vrrp missing", "", ["x.yaml:2: ha.vrrp: missing (required with protocol vrrp3)"]),
    ("own timers refused", "  vrrp: {vrid: 51, interface: eth1}\n  interval: 1s\n",
     ["x.yaml:6: ha.interval: the own heartbeat's timer: with protocol vrrp3 the timers are "
      "ha.vrrp.advert_int's (VRRP's master down interval)"]),
    ("vrid and interface", "  vrrp: {vrid: 0, interface: 'eth 1'}\n",
     ["x.yaml:5: ha.vrrp.vrid: must be 1..255, got 0",
      "x.yaml:5: ha.vrrp.interface: must be an interface name (1-15 characters, no '/' or "
      "space), got 'eth 1'"]),
    ("keepalived's seconds as an integer", "  vrrp: {vrid: 5, interface: e, advert_int: 1}\n",
     ["x.yaml:5: ha.vrrp.advert_int: must be 5..4095 centiseconds, got 1 (an integer is "
      "centiseconds: keepalived's 'advert_int 1' is 100 or 1s)"]),
    ("not whole centiseconds", "  vrrp: {vrid: 5, interface: e, advert_int: 105ms}\n",
     ["x.yaml:5: ha.vrrp.advert_int: must be whole centiseconds (10ms steps), got 105ms"]),
    ("too slow", "  vrrp: {vrid: 5, interface: e, advert_int: 41s}\n",
     ["x.yaml:5: ha.vrrp.advert_int: must be 50ms..40.95s, got 41s"]),
    ("peers", "  vrrp:\n    vrid: 5\n    interface: e\n    source: 192.0.2.11\n"
     "    unicast_peers: [192.0.2.12, 192.0.2.12, '2001:db8::1', 192.0.2.11]\n",
     ["x.yaml:9: ha.vrrp.unicast_peers[1]: duplicate peer 192.0.2.12",
      "x.yaml:9: ha.vrrp.unicast_peers[2]: IPv6 peer among IPv4 peers",
      "x.yaml:9: ha.vrrp.unicast_peers[3]: is this node's own source address 192.0.2.11"]),
    ("unknown key", "  vrrp: {vrid: 5, interface: e, advert: 1s}\n",
     ["x.yaml:5: ha.vrrp.advert: unknown key (did you mean 'advert_int'?)"]),
    ("protocol", "  vrrp: {vrid: 5, interface: e}\n  protocol: vrrp2\n",
     ["x.yaml:6: ha.protocol: duplicate key (first at line 3)"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "extra", "want"), BAD, ids=[b[0] for b in BAD])
def test_refused(name: str, extra: str, want: list[str]) -> None:
    assert _errors(HEAD + extra) == want


def test_other_protocol_name_and_vrrp_without_vrrp3() -> None:
    text = ("node: {name: d1}\nha:\n  protocol: vrrp2\n  bind: '192.0.2.11:5405'\n"
            "  peers: ['192.0.2.12:5405']\n  secret_file: /k\n  vrrp: {vrid: 5, interface: e}\n")
    assert _errors(text) == [
        "x.yaml:3: ha.protocol: must be one of hacontrol, vrrp3, got 'vrrp2' "
        "(did you mean 'vrrp3'?)",
        "x.yaml:7: ha.vrrp: only with protocol: vrrp3 (ha.protocol is hacontrol)",
    ]


def test_family_needs_a_vip_to_advertise() -> None:
    text = ("node: {name: d1}\nha:\n  protocol: vrrp3\n"
            "  vips: [{address: 198.51.100.10/24, interface: eth0}]\n"
            "  vrrp: {vrid: 5, interface: e, unicast_peers: ['2001:db8::12']}\n")
    assert _errors(text) == [
        "x.yaml:5: ha.vrrp: no IPv6 VIP in ha.vips to advertise (the instance's family is "
        "that of its peers or source)"
    ]


def test_a_start_error_names_the_setting_of_the_protocol_in_use() -> None:
    from hacontrol.daemon_ha import ha_start_error

    vrrp = _load(HEAD + "  vrrp: {vrid: 51, interface: eth1}\n")
    own = _load(
        "node: {name: d1}\nha: {bind: 192.0.2.11:5405, peers: [192.0.2.12:5405], "
        "secret_file: /k, vips: [{address: 198.51.100.10/24, interface: eth0}]}\n"
    )
    missing = ValueError("ha.vrrp.interface eth1: no such interface")
    assert ha_start_error(vrrp, missing) == "ha.vrrp.interface eth1: no such interface"
    busy = OSError(98, "Address already in use")
    assert ha_start_error(vrrp, busy) == "ha.vrrp: Address already in use"
    assert ha_start_error(own, busy) == "ha.bind 192.0.2.11:5405: Address already in use"
