"""The ``host:`` and ``nat:`` config sections: what they become, and every refusal with its
``FILE:LINE: FIELD: reason``."""

from __future__ import annotations

import ipaddress

import pytest

from hacontrol.config import ConfigError, loads
from hacontrol.model import HostConfig, NatConfig, SnatRule

HA = """ha:
  bind: "192.0.2.1:5405"
  peers: ["192.0.2.2:5405"]
  secret_file: /nonexistent/key
  vips: [{address: 192.0.2.10/24, interface: eth0}, {address: "2001:db8::10/64", interface: eth0}]
"""


def test_defaults_and_a_full_section() -> None:
    c = loads("node: {name: d}\n")
    assert c.host == HostConfig(set_sysctls=False) and c.nat == NatConfig((), "hacontrol_nat")
    c = loads(
        "node: {name: d}\nhost: {set_sysctls: true}\n" + HA + "nat:\n  table: my_nat\n  snat:\n"
        "    - {source: 198.51.100.0/24, to: 192.0.2.10, out_interface: eth1}\n"
        "    - {source: '2001:db8:1::/64', to: '2001:db8::10'}\n"
        "    - {source: 198.51.100.7, to: 192.0.2.10}\n",
        check_files=False,
    )
    assert c.host.set_sysctls is True
    assert c.nat == NatConfig(
        (
            SnatRule(
                ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_address("192.0.2.10"), "eth1"
            ),
            SnatRule(ipaddress.ip_network("2001:db8:1::/64"), ipaddress.ip_address("2001:db8::10")),
            SnatRule(ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_address("192.0.2.10")),
        ),
        "my_nat",
    )
    assert loads("node: {name: d}\nhost:\nnat:\n").nat == NatConfig()
    assert loads("node: {name: d}\nnat: {snat: }\n").nat.snat == ()


@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ("host: {set_sysctl: true}",
         ["2: host.set_sysctl: unknown key (did you mean 'set_sysctls'?)"]),
        ("host: {set_sysctls: 1}", ["2: host.set_sysctls: must be true or false, got integer 1"]),
        ("host: [a]", ["2: host: must be a mapping, got a list"]),
        ("nat: {snat: {source: 198.51.100.0/24}}", ["2: nat.snat: must be a list, got a mapping"]),
        ("nat: {tables: x}", ["2: nat.tables: unknown key (did you mean 'table'?)"]),
        ("nat: {table: 'a b'}", ["2: nat.table: must be 1-64 letters, digits, '_' or '-', "
                                 "starting with a letter or '_', got 'a b'"]),
        ("dataplane: {nft_table: t1}\nnat: {table: t1}",
         ["3: nat.table: must differ from dataplane.nft_table ('t1')"]),
        ("nat: {table: hacontrol}",
         ["2: nat.table: must differ from dataplane.nft_table ('hacontrol')"]),
        ("nat: {table: hacontrol_3of4}",
         ["2: nat.table: must differ from the data plane's service tables (hacontrol_<i>of<n>)"]),
        ("nat: {snat: [{to: 192.0.2.10}]}", ["2: nat.snat[0].source: missing (required)"]),
        ("nat: {snat: [{source: 198.51.100.0/24}]}", ["2: nat.snat[0].to: missing (required)"]),
        ("nat: {snat: [{source: 198.51.100.9/24, to: 192.0.2.10}]}",
         ["2: nat.snat[0].source: has host bits set: '198.51.100.9/24' "
          "(did you mean 198.51.100.0/24?)"]),
        ("nat: {snat: [{source: 198.51.100.0/33, to: 192.0.2.10}]}",
         ["2: nat.snat[0].source: invalid address/prefix '198.51.100.0/33'"]),
        ("nat: {snat: [{source: 198.51.100.0/24, to: 0.0.0.0}]}",
         ["2: nat.snat[0].to: must not be the unspecified address, got 0.0.0.0"]),
        ("nat: {snat: [{source: 198.51.100.0/24, to: '2001:db8::10'}]}",
         ["2: nat.snat[0].to: must be of the family of source 198.51.100.0/24, got 2001:db8::10"]),
        ("nat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.10, out_interface: 'eth 0'}]}",
         ["2: nat.snat[0].out_interface: must be an interface name "
          "(1-15 characters, no '/' or space), got 'eth 0'"]),
        ("nat:\n  snat:\n    - {source: 198.51.100.0/24, to: 192.0.2.10}\n"
         "    - {source: 198.51.100.0/24, to: 192.0.2.11}",
         ["5: nat.snat[1]: duplicate of nat.snat[0] (same source and interface)"]),
        ("nat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.10, via: x}]}",
         ["2: nat.snat[0].via: unknown key (allowed: source, to, out_interface)"]),
    ],
)  # fmt: skip
def test_refused(body: str, errors: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"node: {{name: d}}\n{body}\n", source="x.yaml", check_files=False)
    assert [str(i) for i in e.value.errors] == [f"x.yaml:{line}" for line in errors]


def test_a_nat_table_may_look_like_a_service_table_the_plane_never_takes() -> None:
    text = "node: {name: d}\nnat: {table: hacontrol_4of4}\n"
    cfg = loads(text, source="x.yaml", check_files=False)
    assert cfg.nat is not None and cfg.nat.table == "hacontrol_4of4"


def test_with_ha_the_snat_address_must_be_a_vip() -> None:
    text = "node: {name: d}\n" + HA + "nat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.99}]}\n"
    with pytest.raises(ConfigError) as e:
        loads(text, source="x.yaml", check_files=False)
    (issue,) = e.value.errors
    assert (issue.line, issue.field) == (7, "nat.snat[0].to")
    assert issue.reason.startswith(
        "must be one of ha.vips (192.0.2.10, 2001:db8::10), got 192.0.2.99"
    )
    # without ha: any address (a lone director is always active; it must hold it itself)
    assert loads("node: {name: d}\nnat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.99}]}\n")
