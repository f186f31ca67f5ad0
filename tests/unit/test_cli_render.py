"""The CLI's text rendering (hacontrol.cli_render), on plain dicts: no daemon, no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from hacontrol.cli_render import duration, render_drill, render_ha, render_status


def status_doc(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node": "d1", "role": "standalone", "version": "1.0", "uptime": 12.4,
        "config": {"source": "/etc/hacontrol.yaml", "digest": "0123456789abcdef"},
        "dataplane": {"kind": "nft", "last_result": "ok", "last_apply_ago": 0.5, "applies": 3,
                      "consecutive_errors": 0, "drift_repairs": 1},
        "services": [{
            "name": "web", "vip": "192.0.2.10:80", "scheduler": "rr", "forwarding": "nat",
            "up": 1, "on_failure": "drop",
            "real_servers": [
                {"address": "198.51.100.1", "port": 80, "health": "up", "weight": 1,
                 "kernel_weight": 1, "last_check": {"reason": "200", "age": 0.25,
                                                    "latency_ms": 1.23},
                 "health_since_ago": 1000.0,
                 "connections": {"active": 12, "inactive": 3, "persistent": 0}},
                {"address": "2001:db8::2", "port": 8080, "health": "down", "weight": 1,
                 "kernel_weight": None, "last_check": {"reason": "timeout", "age": 300.0},
                 "health_since_ago": 192.5, "connections": None},
            ],
        }],
    }  # fmt: skip
    doc.update(over)
    return doc


def test_status_table() -> None:
    lines = render_status(status_doc()).splitlines()
    assert lines[0] == "node d1  role standalone  version 1.0  uptime 12s"
    assert lines[1] == "config /etc/hacontrol.yaml  digest 0123456789ab"
    assert "last apply ok (0.5s ago)" in lines[2] and "drift repairs 1" in lines[2]
    assert lines[3] == ""
    assert lines[4] == "web  192.0.2.10:80  rr/nat  up 1/2  on_failure drop"
    assert lines[5].split() == ["REAL", "SERVER", "HEALTH", "WEIGHT", "KERNEL", "CONNS", "A/I",
                                "LAST", "CHECK"]  # fmt: skip
    assert lines[6].split() == ["198.51.100.1:80", "up", "1", "1", "12/3", "200", "(0.2s", "ago,",
                                "1.2", "ms)"]  # fmt: skip
    # how long it has been down; connections unknown (a plane without counters)
    assert lines[7].split() == ["[2001:db8::2]:8080", "down", "3m12s", "1", "-", "-", "timeout",
                                "(5m", "ago)"]  # fmt: skip
    assert lines[5].index("HEALTH") == lines[6].index("up") == lines[7].index("down")  # aligned
    assert lines[5].index("CONNS") == lines[6].index("12/3")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (192.5, "3m12s"), (3599, "59m59s"),
     (3600, "1h00m"), (7500, "2h05m"), (86400, "1d00h"), (273600, "3d04h")],
)  # fmt: skip
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("over", "want"),
    [
        ({"dry_run": True}, "(dry run)"),
        ({"dataplane": {**status_doc()["dataplane"], "error": "EPERM"}}, "  error: EPERM"),
        ({"services": [{**status_doc()["services"][0], "in_kernel": False}]}, "NOT IN KERNEL"),
        (
            {
                "services": [
                    {
                        **status_doc()["services"][0],
                        "sorry_server": {"address": "203.0.113.9", "port": 80, "active": True},
                    }
                ]
            },
            "  sorry server 203.0.113.9:80 ACTIVE",
        ),
    ],
)
def test_status_optional_parts(over: dict[str, Any], want: str) -> None:
    assert want in render_status(status_doc(**over))


HA: dict[str, Any] = {
    "role": "active", "since": "12:00:00", "since_ago": 3.0, "reason": "won election",
    "priority": 100, "effective_priority": 50, "blocked": True,
    "faults": [{"name": "gateway", "reason": "no answer", "blocking": True}],
    "config": {"peer_match": False},
    "peer": {"name": "d2", "role": "backup", "priority": 90, "effective_priority": 90,
             "alive": True, "last_heard_ago": 0.1, "paths": {"eth1": {"last_heard_ago": 0.1}}},
    "vips_held": True, "lease": 3.0,
    "vips": [{"address": "192.0.2.10/24", "interface": "eth0", "present": True,
              "lease_left": 2.5}],
    "transitions": [{"ago": 3.0, "from": "backup", "to": "active", "reason": "peer dead"}],
}  # fmt: skip


def test_ha_block() -> None:
    assert render_ha(HA) == [
        "ha role ACTIVE since 12:00:00 (3.0s ago): won election",
        "   priority 100 (effective 50)  BLOCKED",
        "   fault gateway: no answer (blocking)",
        "   !!! CONFIG DIGEST MISMATCH with the peer !!!",
        "   peer d2 backup priority 90 (effective 90) alive, last heard 0.1s ago; paths: eth1 "
        "0.1s ago",
        "   VIPs held here, lease 3s",
        "     192.0.2.10/24 on eth0: present, 2.5s left",
        "   last transitions:",
        "     3.0s ago: backup -> active: peer dead",
    ]


def test_ha_block_peer_never_heard_and_lease_off() -> None:
    lines = render_ha({"role": "starting", "peers_configured": ["192.0.2.2"], "lease": None})
    assert "   peer: never heard (configured: 192.0.2.2)" in lines
    assert "   VIPs not held here, lease off" in lines
    assert (
        render_status(status_doc(ha={"role": "backup"}))
        .splitlines()[3]
        .startswith("ha role BACKUP")
    )  # the HA block sits above the services


@pytest.mark.parametrize(
    ("doc", "want"),
    [
        (
            {"drill": "handover", "ok": True, "handover_sent": 0.0, "vip_added": 0.0021,
             "detection": 0.0012, "gap": 0.0, "overlap": 0.004},
            ["drill handover: ok", "       +0.0 ms  handover sent to the peer",
             "       +1.2 ms  peer detected it (became active)",
             "       +2.1 ms  peer added the VIPs",
             "  overlap (both held the VIPs): 0.004s", "  gap: 0.000s"],
        ),
        (
            {"drill": "fault", "ok": False, "seconds": 2, "fault": 0.0, "gap": None,
             "announce_count": 3, "error": "the peer did not take over"},
            ["drill fault (2s): FAILED",
             "       +0.0 ms  fault: this node drops its VIPs and goes silent",
             "  announcements sent by the peer: 3", "  gap: -",
             "  error: the peer did not take over"],
        ),
        ({}, ["drill ?: FAILED", "  gap: -"]),
    ],
)  # fmt: skip
def test_drill_timeline(doc: dict[str, Any], want: list[str]) -> None:
    assert render_drill(doc).splitlines() == want


def test_ha_block_in_vrrp_mode_names_what_is_unavailable() -> None:
    doc = {"role": "backup", "protocol": "vrrp3", "unavailable": ["authentication", "drills"]}
    lines = render_ha(doc)
    want = "   protocol VRRPv3 (keepalived-compatible); unavailable: authentication, drills"
    assert lines[2] == want
    assert not any("VRRP" in line for line in render_ha({"role": "backup"}))
