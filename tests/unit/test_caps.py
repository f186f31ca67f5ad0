"""hacontrol.caps: the CapEff mask decoded, what each config needs and why, the refusal wording,
and the check against a status file."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.caps import NAMES, check, decode, effective, needed, refusal, refused
from hacontrol.config import loads
from hacontrol.model import Config

ADMIN_RAW = "0000000000003000"  # setpriv --ambient-caps=+net_admin,+net_raw


@pytest.mark.parametrize(
    ("mask", "names"),
    [
        ("0000000000000000", set()),
        ("0000000000001000", {"CAP_NET_ADMIN"}),
        ("0000000000002000", {"CAP_NET_RAW"}),
        (ADMIN_RAW, {"CAP_NET_ADMIN", "CAP_NET_RAW"}),
        ("0000000000000001", {"CAP_CHOWN"}),
        ("0000000000000400", {"CAP_NET_BIND_SERVICE"}),
        ("0000010000000000", {"CAP_CHECKPOINT_RESTORE"}),  # bit 40, the last one named
        ("0000020000000000", {"CAP_41"}),  # a kernel newer than the table
        ("000001ffffffffff", set(NAMES)),  # root on a 6.x kernel
        ("000001fffeffffff", set(NAMES) - {"CAP_SYS_RESOURCE"}),
        ("  3000\n", {"CAP_NET_ADMIN", "CAP_NET_RAW"}),
    ],
)
def test_decode(mask: str, names: set[str]) -> None:
    assert decode(mask) == names


@pytest.mark.parametrize("mask", ["", "xyz", "0x", "-1"])
def test_decode_refuses_what_is_not_a_mask(mask: str) -> None:
    with pytest.raises(ValueError):
        decode(mask)


def test_names_follow_the_kernel_numbering() -> None:
    assert NAMES.index("CAP_NET_ADMIN") == 12 and NAMES.index("CAP_NET_RAW") == 13
    assert NAMES.index("CAP_SYS_ADMIN") == 21 and len(NAMES) == 41


STATUS = f"""Name:\tpython3
Umask:\t0027
CapInh:\t{ADMIN_RAW}
CapPrm:\t{ADMIN_RAW}
CapEff:\t0000000000001000
CapBnd:\t{ADMIN_RAW}
CapAmb:\t{ADMIN_RAW}
NoNewPrivs:\t1
"""


def test_effective_reads_the_effective_line_only() -> None:
    assert effective(STATUS) == {"CAP_NET_ADMIN"}
    with pytest.raises(ValueError):
        effective("Name:\tx\nCapPrm:\t3000\n")


def cfg(plane: str, ha: str = "") -> Config:
    return loads(
        f"node: {{name: a}}\ndataplane: {{kind: {plane}}}\n{ha}", source="t.yaml",
        check_files=False,
    )  # fmt: skip


HA = """ha:
  bind: 0.0.0.0:5405
  peers: [192.0.2.12:5405]
  secret_file: /etc/hacontrol/ha.key
  vips: [VIPS]
  TRACK
"""


def ha(vips: str = "{address: 192.0.2.10/24, interface: eth0}", track: str = "") -> str:
    return HA.replace("VIPS", vips).replace("TRACK", track)


V6 = "{address: 2001:db8::10/64, interface: eth0}"
NAT_SYNC = "sync: {interface: eth1}"


@pytest.mark.parametrize(
    ("plane", "kind", "ha_text", "dry", "want"),
    [
        ("memory", "memory", "", False, {}),
        ("nftables", "nftables", "", True, {}),  # a dry run touches nothing
        ("nftables", "nftables", ha(), True, {}),
        ("nftables", "nftables", "", False, {"CAP_NET_ADMIN": ["nftables table"]}),
        ("ipvs", "ipvs", "", False, {"CAP_NET_ADMIN": ["IPVS table"]}),
        ("auto", "auto", "", False, {"CAP_NET_ADMIN": ["IPVS or nftables table"]}),
        ("memory", "memory", ha(), False,
         {"CAP_NET_ADMIN": ["VIP addresses"], "CAP_NET_RAW": ["gratuitous ARP"]}),
        ("nftables", "nftables", ha(), False,
         {"CAP_NET_ADMIN": ["nftables table", "VIP addresses"],
          "CAP_NET_RAW": ["gratuitous ARP"]}),
        ("ipvs", "ipvs", ha(V6, "track: {gateway: 2001:db8::1}"), False,
         {"CAP_NET_ADMIN": ["IPVS table", "VIP addresses"],
          "CAP_NET_RAW": ["unsolicited neighbour advertisements", "gateway pings"]}),
        ("ipvs", "ipvs", ha(track=NAT_SYNC), False,
         {"CAP_NET_ADMIN": ["IPVS table", "VIP addresses", "IPVS connection sync"],
          "CAP_NET_RAW": ["gratuitous ARP"]}),
        ("nftables", "nftables", ha(track=NAT_SYNC), False,  # sync is ignored on nftables
         {"CAP_NET_ADMIN": ["nftables table", "VIP addresses"],
          "CAP_NET_RAW": ["gratuitous ARP"]}),
    ],
)  # fmt: skip
def test_needed(
    plane: str, kind: str, ha_text: str, dry: bool, want: dict[str, list[str]]
) -> None:
    assert needed(cfg(plane, ha_text), kind, dry) == want


def test_snat_and_sysctls_need_net_admin() -> None:
    c = loads(
        "node: {name: a}\ndataplane: memory\nhost: {set_sysctls: true}\n"
        "nat: {snat: [{source: 198.51.100.0/24, to: 192.0.2.10}]}\n",
        check_files=False,
    )
    assert needed(c, "memory", False) == {"CAP_NET_ADMIN": ["SNAT table", "sysctls"]}
    assert needed(c, "memory", True) == {}


def test_refusal_names_each_missing_capability_and_why() -> None:
    need = {"CAP_NET_ADMIN": ["nftables table", "VIP addresses"], "CAP_NET_RAW": ["gratuitous ARP"]}
    assert refusal(need, {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_CHOWN"}) is None
    assert refusal(need, {"CAP_NET_ADMIN"}) == "missing capabilities: CAP_NET_RAW (gratuitous ARP)"
    assert refusal(need, set()) == (
        "missing capabilities: CAP_NET_ADMIN (nftables table, VIP addresses); "
        "CAP_NET_RAW (gratuitous ARP)"
    )
    assert refusal({}, set()) is None


def test_check_reads_the_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(STATUS)  # CAP_NET_ADMIN only
    c = cfg("nftables", ha())
    assert check(c, "nftables", False, str(status)) == (
        "missing capabilities: CAP_NET_RAW (gratuitous ARP)"
    )
    assert check(c, "nftables", True, str(status)) is None  # dry run
    assert check(cfg("nftables"), "nftables", False, str(status)) is None
    status.write_text(STATUS.replace("CapEff:\t0000000000001000", f"CapEff:\t{ADMIN_RAW}"))
    assert check(c, "nftables", False, str(status)) is None
    # unreadable: no refusal (the kernel then answers each operation itself)
    assert check(c, "nftables", False, str(tmp_path / "missing")) is None


def test_refused_logs_daemon_start_error(tmp_path: Path) -> None:
    """What run_daemon does with the verdict: log it as daemon.start result=error."""
    status = tmp_path / "status"
    status.write_text(STATUS)  # CAP_NET_ADMIN only
    with capture_logs() as logs:
        assert refused(cfg("nftables"), "nftables", False, str(status)) is False
        assert refused(cfg("nftables", ha()), "nftables", False, str(status)) is True
    assert [(e["event"], e["log_level"], e["result"], e["reason"]) for e in logs] == [
        ("daemon.start", "error", "error", "missing capabilities: CAP_NET_RAW (gratuitous ARP)")
    ]
