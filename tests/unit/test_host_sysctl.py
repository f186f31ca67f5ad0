"""The sysctls a config needs (hacontrol.host.needs, pure, table-driven) and their check and
setting (hacontrol.host.sysctl) against a /proc/sys-shaped directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.config import loads
from hacontrol.host.needs import SysctlNeed, required_sysctls
from hacontrol.host.sysctl import check_sysctls, host_check, read_sysctl, set_sysctls

FWD4, FWD6, CT = "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.vs.conntrack"


def cfg(services: str = "", nat: str = "", host: str = "") -> str:
    return f"node: {{name: d}}\nservices: [{services}]\n{nat}\n{host}\n"


NAT4 = "{name: web, vip: 192.0.2.10, port: 80, forwarding: nat}"
NAT6 = "{name: web6, vip: '2001:db8::10', port: 80, forwarding: nat}"
DR = "{name: dr, vip: 192.0.2.11, port: 80, forwarding: dr}"
TUN = "{name: tun, vip: 192.0.2.12, port: 80, forwarding: tunnel}"
SNAT4 = "nat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.10}]}"
SNAT6 = "nat: {snat: [{source: '2001:db8:1::/64', to: '2001:db8::10'}]}"


@pytest.mark.parametrize(
    ("text", "plane", "want"),
    [
        (cfg(), "ipvs", []),
        (cfg(NAT4), "ipvs", [(FWD4, "1", "service web")]),
        (cfg(NAT4), "nftables", [(FWD4, "1", "service web")]),
        (cfg(NAT6), "ipvs", [(FWD6, "1", "service web6")]),
        (cfg(f"{NAT4}, {NAT6}"), "ipvs", [(FWD4, "1", "service web:"), (FWD6, "1", "web6")]),
        (cfg(DR), "ipvs", []),  # DR: nothing on the director (arp_* are the real servers')
        (cfg(TUN), "ipvs", []),
        (cfg(DR, SNAT4), "ipvs", [(FWD4, "1", "nat.snat[0]")]),  # no NAT service: no conntrack
        (cfg(NAT4, SNAT4), "ipvs", [(FWD4, "1", "web|nat.snat[0]"), (CT, "1", "reaching a VIP")]),
        (cfg(NAT4, SNAT4), "nftables", [(FWD4, "1", "nat.snat[0]")]),  # no IPVS: no vs.*
        (cfg(NAT6, SNAT6), "ipvs", [(FWD6, "1", "web6|nat.snat[0]"), (CT, "1", "IPVS NAT")]),
        (cfg(NAT4, SNAT4), "memory", []),
    ],
)
def test_required_sysctls(text: str, plane: str, want: list[tuple[str, str, str]]) -> None:
    needs = required_sysctls(loads(text), plane)
    assert [(n.key, n.want) for n in needs] == [(k, v) for k, v, _ in want]
    for n, (_, _, why) in zip(needs, want, strict=True):
        assert all(part in n.why for part in why.split("|")), (n.why, why)


def proc_sys(tmp: Path, values: dict[str, str]) -> str:
    for key, value in values.items():
        p = tmp.joinpath(*key.split("."))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(value + "\n")
    return str(tmp)


NEEDS = [SysctlNeed(FWD4, "1", "service web: NAT"), SysctlNeed(CT, "1", "snat")]


def test_check_reports_each_mismatch(tmp_path: Path) -> None:
    root = proc_sys(tmp_path, {FWD4: "0"})  # no vs.conntrack: ip_vs not loaded
    with capture_logs() as logs:
        checks = check_sysctls(NEEDS, root)
    assert [(c.key, c.have, c.ok, c.error) for c in checks] == [
        (FWD4, "0", False, None),
        (CT, None, False, "ip_vs is not loaded"),
    ]
    assert [(e["event"], e["key"], e["want"], e["have"], e["reason"]) for e in logs] == [
        ("host.sysctl", FWD4, "1", "0", "service web: NAT"),
        ("host.sysctl", CT, "1", None, "snat"),
    ]
    assert all(e["log_level"] == "warning" for e in logs)
    assert checks[0].as_dict() == {
        "key": FWD4, "want": "1", "have": "0", "ok": False, "reason": "service web: NAT",
        "error": None,
    }  # fmt: skip
    with capture_logs() as quiet:
        check_sysctls(NEEDS, root, report=False)
    assert quiet == []


def test_set_writes_mismatches_and_reports_what_it_cannot(tmp_path: Path) -> None:
    root = proc_sys(tmp_path, {FWD4: "0"})
    with capture_logs() as logs:
        after = set_sysctls(check_sysctls(NEEDS, root, report=False), root)
    assert read_sysctl(FWD4, root) == "1"
    assert [(c.key, c.have, c.ok) for c in after] == [(FWD4, "1", True), (CT, None, False)]
    assert after[1].error is not None and after[1].error.startswith("cannot set:")
    assert [(e["event"], e["key"]) for e in logs] == [
        ("host.sysctl_set", FWD4),
        ("host.sysctl_error", CT),
    ]


def test_host_check_sets_only_when_the_config_says_so(tmp_path: Path) -> None:
    text = cfg(NAT4, SNAT4)
    root = proc_sys(tmp_path, {FWD4: "0", CT: "0"})
    checks = host_check(loads(text), "ipvs", root)
    assert not any(c.ok for c in checks) and read_sysctl(FWD4, root) == "0"
    checks = host_check(loads(cfg(NAT4, SNAT4, "host: {set_sysctls: true}")), "ipvs", root)
    assert all(c.ok for c in checks)
    assert (read_sysctl(FWD4, root), read_sysctl(CT, root)) == ("1", "1")
