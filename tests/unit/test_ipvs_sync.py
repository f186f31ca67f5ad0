"""The IPVS sync-daemon codec, plan and manager (no root, no kernel): hand-computed bytes, a
table of plans, ``SyncDaemons`` over a fake plane, the ``ha.sync`` config and the daemon seam.

Netlink attributes are in host byte order: the hand-computed bytes are little-endian (x86).
"""

from __future__ import annotations

import errno
import sys
from typing import Any

import pytest
from structlog.testing import capture_logs

from hacontrol.clock import FakeClock
from hacontrol.config import ConfigError, loads
from hacontrol.daemon_ha import start_sync
from hacontrol.dataplane.ipvs_codec import parse_attrs
from hacontrol.dataplane.ipvs_sync import (
    CMD_ATTR_DAEMON,
    CMD_DEL_DAEMON,
    CMD_GET_DAEMON,
    CMD_NEW_DAEMON,
    SyncDaemon,
    SyncDaemons,
    daemon_attrs,
    decode_daemon,
    plan,
)
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.model import SyncConfig

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="bytes computed for x86")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# ---------------------------------------------------------------------- codec
def test_command_numbers_match_ip_vs_h() -> None:
    # enum after IPVS_CMD_GET_DEST (8): NEW_DAEMON, DEL_DAEMON, GET_DAEMON
    assert (CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON, CMD_ATTR_DAEMON) == (9, 10, 11, 3)


def test_new_daemon_attrs_hand_computed() -> None:
    expected = h(
        "2000 0380"  # nested IPVS_CMD_ATTR_DAEMON (3 | NLA_F_NESTED), 32 bytes
        "0800 0100 01000000"  # IPVS_DAEMON_ATTR_STATE u32 1 (master)
        "0900 0200 65746832 00 000000"  # IPVS_DAEMON_ATTR_MCAST_IFN "eth2\0", padded to 4
        "0800 0300 01000000"  # IPVS_DAEMON_ATTR_SYNC_ID u32 1
    )
    assert daemon_attrs("master", "eth2", 1) == expected


def test_new_backup_daemon_long_name_hand_computed() -> None:
    # a 15-byte name + NUL = 16 bytes: attribute length 20, no padding
    expected = h("2800 03800800 0100 020000001400 0200" + "61" * 15 + "000800 0300 ff000000")
    assert daemon_attrs("backup", "a" * 15, 255) == expected


def test_del_daemon_carries_only_the_state() -> None:
    assert daemon_attrs("backup") == h("0c00 0380 0800 0100 02000000")


@pytest.mark.parametrize(
    ("iface", "syncid"), [("", 1), ("a" * 16, 1), ("et\0h", 1), ("eth0", 256), ("eth0", -1)]
)
def test_bad_interface_or_syncid_is_refused(iface: str, syncid: int) -> None:
    with pytest.raises(ValueError):
        daemon_attrs("master", iface, syncid)


# a GET_DAEMON reply's nested attribute as kernel 6.1 fills it (ip_vs_genl_fill_daemon)
REPLY = h(
    "0800 0100 01000000"  # state master
    "0900 0200 65746832 00 000000"  # "eth2"
    "0800 0300 07000000"  # syncid 7
    "0600 0400 c005 0000"  # sync_maxlen u16 1472
    "0600 0700 9022 0000"  # mcast_port u16 8848 = 0x2290 (host order)
    "0500 0800 01 000000"  # mcast_ttl u8 1
    "0800 0500 e0000051"  # mcast_group 224.0.0.81 (network order)
)


def test_decode_get_daemon_reply() -> None:
    d = decode_daemon(parse_attrs(REPLY))
    assert d == SyncDaemon("master", "eth2", 7)
    assert d is not None and d.view() == {
        "state": "master", "interface": "eth2", "syncid": 7, "maxlen": 1472,
        "group": "224.0.0.81", "port": 8848, "ttl": 1,
    }  # fmt: skip


def test_decode_round_trips_our_encoding_and_refuses_junk() -> None:
    nested = parse_attrs(daemon_attrs("backup", "inside0", 42))
    d = decode_daemon(parse_attrs(nested[CMD_ATTR_DAEMON]))
    assert d is not None and d.view()["group"] is None
    assert (d.state, d.interface, d.syncid) == ("backup", "inside0", 42)
    assert decode_daemon(parse_attrs(h("0800 0100 01000000"))) is None  # no ifn / syncid
    bad_state = h("0800 0100 05000000 0900 0200 65746832 00000000 0800 0300 01000000")
    assert decode_daemon(parse_attrs(bad_state)) is None


# ---------------------------------------------------------------------- plan
M = SyncDaemon("master", "eth2", 1)
B = SyncDaemon("backup", "eth2", 1)
WANT = SyncConfig("eth2", 1)

PLANS: list[tuple[str, SyncConfig | None, list[SyncDaemon], list[tuple[str, SyncDaemon]]]] = [
    ("nothing runs", WANT, [], [("start", M), ("start", B)]),
    ("all there", WANT, [B, M], []),
    ("backup missing", WANT, [M], [("start", B)]),
    (
        "other syncid",
        WANT,
        [SyncDaemon("master", "eth2", 9), B],
        [("stop", SyncDaemon("master", "eth2", 9)), ("start", M)],
    ),
    (
        "other interface",
        WANT,
        [M, SyncDaemon("backup", "eth3", 1)],
        [("stop", SyncDaemon("backup", "eth3", 1)), ("start", B)],
    ),
    ("stop all", None, [M, B], [("stop", M), ("stop", B)]),
    ("stop all, none", None, [], []),
]


@pytest.mark.parametrize(
    ("want", "running", "ops"), [p[1:] for p in PLANS], ids=[p[0] for p in PLANS]
)
def test_plan(
    want: SyncConfig | None, running: list[SyncDaemon], ops: list[tuple[str, SyncDaemon]]
) -> None:
    assert plan(want, running) == ops


def test_equality_ignores_multicast_details() -> None:
    assert SyncDaemon("master", "eth2", 1, maxlen=1472, port=8848) == M


# ---------------------------------------------------------------------- manager
class FakeKernel:
    """The kernel's sync daemon state behind the IpvsRequests protocol."""

    def __init__(self, running: list[SyncDaemon] | None = None, fail: int = 0) -> None:
        self.running: dict[str, SyncDaemon] = {d.state: d for d in running or []}
        self.fail = fail  # errno for every NEW_DAEMON
        self.calls: list[tuple[int, bytes]] = []

    async def dump_nested(self, cmd: int, body: bytes, want: int) -> list[dict[int, Any]]:
        assert (cmd, body, want) == (CMD_GET_DAEMON, b"", CMD_ATTR_DAEMON)
        out = []
        for d in self.running.values():
            top = parse_attrs(daemon_attrs(d.state, d.interface, d.syncid))
            out.append(parse_attrs(top[CMD_ATTR_DAEMON]))
        return out

    async def request(self, cmd: int, body: bytes) -> int:
        self.calls.append((cmd, body))
        nested = parse_attrs(parse_attrs(body)[CMD_ATTR_DAEMON])
        state = {1: "master", 2: "backup"}[int.from_bytes(nested[1], "little")]
        if cmd == CMD_DEL_DAEMON:
            return 0 if self.running.pop(state, None) else errno.ESRCH
        if self.fail:
            return self.fail
        if state in self.running:
            return errno.EEXIST
        d = decode_daemon(nested)
        assert d is not None
        self.running[state] = d
        return 0


async def test_reconcile_starts_what_is_missing_then_nothing() -> None:
    k = FakeKernel([M])
    clock = FakeClock(100.0)
    sync = SyncDaemons(k, WANT, clock=clock)
    with capture_logs() as logs:
        assert await sync.reconcile("start")
    assert k.calls == [(CMD_NEW_DAEMON, daemon_attrs("backup", "eth2", 1))]
    assert [e["event"] for e in logs] == ["dataplane.sync"]
    assert logs[0]["reason"] == "start: not running" and logs[0]["state"] == "backup"
    clock.advance(2.5)
    st = sync.status(clock())
    assert st["ok"] and st["error"] is None and st["checked_ago"] == 2.5
    assert sorted(d["state"] for d in st["daemons"]) == ["backup", "master"]
    k.calls.clear()
    assert await sync.reconcile("resync")
    assert k.calls == []


async def test_reconcile_replaces_a_daemon_with_another_syncid() -> None:
    k = FakeKernel([SyncDaemon("master", "eth2", 9), B])
    sync = SyncDaemons(k, WANT, clock=FakeClock())
    assert await sync.reconcile("start")
    assert k.calls == [
        (CMD_DEL_DAEMON, daemon_attrs("master")),
        (CMD_NEW_DAEMON, daemon_attrs("master", "eth2", 1)),
    ]
    assert set(k.running.values()) == {M, B}


async def test_error_is_kept_logged_once_and_recovers() -> None:
    k = FakeKernel(fail=errno.ENODEV)
    sync = SyncDaemons(k, WANT, clock=FakeClock())
    with capture_logs() as logs:
        assert not await sync.reconcile("start")
        assert not await sync.reconcile("resync")
    errors = [e for e in logs if e["event"] == "dataplane.sync_error"]
    assert len(errors) == 1 and "ENODEV" in errors[0]["error"]
    st = sync.status(0.0)
    assert not st["ok"] and "start master daemon on eth2 syncid 1: ENODEV" in st["error"]
    k.fail = 0
    with capture_logs() as logs:
        assert await sync.reconcile("resync")
    assert "dataplane.sync_ok" in [e["event"] for e in logs]
    assert sync.status(0.0)["ok"]


async def test_close_keeps_the_daemons_unless_told_otherwise() -> None:
    k = FakeKernel()
    sync = SyncDaemons(k, WANT, clock=FakeClock())
    await sync.reconcile("start")
    sync.start(3600.0)
    await sync.close(keep=True)
    assert set(k.running.values()) == {M, B}
    await sync.close(keep=False)
    assert k.running == {}


# ---------------------------------------------------------------------- config + daemon seam
PAIR = """\
node: {name: d1}
dataplane: {kind: %s}
ha:
  bind: "192.0.2.11:5405"
  peers: ["192.0.2.12:5405"]
  secret_file: /etc/hacontrol/ha.key
"""


def test_config_sync_parsed_and_defaults() -> None:
    cfg = loads(PAIR % "ipvs" + "  sync: {interface: eth2, syncid: 7}\n", check_files=False)
    assert cfg.ha is not None and cfg.ha.sync == SyncConfig("eth2", 7)
    cfg = loads(PAIR % "ipvs" + "  sync: {interface: eth2}\n", check_files=False)
    assert cfg.ha is not None and cfg.ha.sync == SyncConfig("eth2", 0)
    cfg = loads(PAIR % "ipvs" + "  sync:\n", check_files=False)
    assert cfg.ha is not None and cfg.ha.sync is None
    plain = loads(PAIR % "ipvs", check_files=False)
    assert plain.ha is not None and plain.ha.sync is None


@pytest.mark.parametrize(
    ("extra", "errors"),
    [
        ("  sync: {interface: eth2, syncid: 256}\n", ["x.yaml:7: ha.sync.syncid: "]),
        ("  sync: {syncid: 1}\n", ["x.yaml:7: ha.sync.interface: missing (required)"]),
        ("  sync: {interface: eth2, sycnid: 1}\n", ["x.yaml:7: ha.sync.sycnid: unknown key"]),
        ("  sync: {interface: 'a b'}\n", ["x.yaml:7: ha.sync.interface: "]),
        ("  sync: eth2\n", ["x.yaml:7: ha.sync: must be a mapping"]),
    ],
)
def test_config_sync_errors_name_file_and_line(extra: str, errors: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        loads(PAIR % "ipvs" + extra, source="x.yaml", check_files=False)
    got = [str(i) for i in e.value.errors]
    assert len(got) == len(errors)
    for text, prefix in zip(got, errors, strict=True):
        assert text.startswith(prefix), text


async def test_start_sync_ignored_with_a_warning_on_other_planes() -> None:
    cfg = loads(PAIR % "nftables" + "  sync: {interface: eth2}\n", check_files=False)
    plane = MemoryDataplane()
    plane.kind = "nftables"  # as the nftables plane reports itself
    with capture_logs() as logs:
        assert await start_sync(cfg, plane, FakeClock()) is None
    (w,) = [e for e in logs if e["event"] == "dataplane.sync_unsupported"]
    assert w["log_level"] == "warning" and "hand-off" in w["reason"]
    no_sync = loads(PAIR % "nftables", check_files=False)
    with capture_logs() as logs:
        assert await start_sync(no_sync, plane, FakeClock()) is None
    assert logs == []
