"""The SNAT table: its nft JSON (pure), the read-back, and the component's role handling over a
recording nft stand-in (the real kernel: tests/integration/test_snat_nft.py, tests/ipvs)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from structlog.testing import capture_logs

from hacontrol.dataplane.snat import PRIORITY, SnatTable, live_comments, render_snat, rule_comment
from hacontrol.model import NatConfig, SnatRule

R4 = SnatRule(ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_address("192.0.2.10"), "eth0")
R6 = SnatRule(ipaddress.ip_network("2001:db8:1::/64"), ipaddress.ip_address("2001:db8::10"))
H4 = SnatRule(ipaddress.ip_network("198.51.100.7/32"), ipaddress.ip_address("192.0.2.10"))
IDENT = {"family": "inet", "name": "hacontrol_nat"}


def test_render_active() -> None:
    doc = render_snat([R4, R6, H4], "hacontrol_nat", True)
    batch = doc["nftables"]
    assert batch[:3] == [
        {"add": {"table": IDENT}},
        {"delete": {"table": IDENT}},
        {"add": {"table": IDENT}},
    ]
    assert batch[3] == {
        "add": {
            "chain": {
                "family": "inet", "table": "hacontrol_nat", "name": "snat_post", "type": "nat",
                "hook": "postrouting", "prio": 90, "policy": "accept",
            }
        }
    }  # fmt: skip
    rules = [b["add"]["rule"] for b in batch[4:]]
    assert [r["comment"] for r in rules] == [
        "hc snat 198.51.100.0/24 to 192.0.2.10 oif eth0",
        "hc snat 2001:db8:1::/64 to 2001:db8::10",
        "hc snat 198.51.100.7/32 to 192.0.2.10",
    ]
    assert rules[0]["expr"] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": {"prefix": {"addr": "198.51.100.0", "len": 24}}}},
        {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "eth0"}},
        {"snat": {"family": "ip", "addr": "192.0.2.10"}},
    ]  # fmt: skip
    assert rules[1]["expr"][-1] == {"snat": {"family": "ip6", "addr": "2001:db8::10"}}
    assert rules[2]["expr"][0]["match"]["right"] == "198.51.100.7"  # a /32 is a plain address
    assert all(r["chain"] == "snat_post" for r in rules)


def test_render_inactive_or_empty_deletes_the_table() -> None:
    gone = {"nftables": [{"add": {"table": IDENT}}, {"delete": {"table": IDENT}}]}
    assert render_snat([R4], "hacontrol_nat", False) == gone
    assert render_snat([], "hacontrol_nat", True) == gone


def listing(
    rules: list[SnatRule], prio: int = PRIORITY, extra_chain: bool = False
) -> dict[str, Any]:
    """What ``nft -j list table`` prints for our table (metainfo and handles included)."""
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {**IDENT, "handle": 1}},
    ]
    items.append({"chain": {"family": "inet", "table": "hacontrol_nat", "name": "snat_post",
                            "handle": 1, "type": "nat", "hook": "postrouting", "prio": prio,
                            "policy": "accept"}})  # fmt: skip
    if extra_chain:
        items.append({"chain": {"family": "inet", "table": "hacontrol_nat", "name": "x"}})
    for i, r in enumerate(rules):
        items.append({"rule": {"chain": "snat_post", "handle": i + 2, "comment": rule_comment(r)}})
    return {"nftables": items}


def test_live_comments() -> None:
    assert live_comments(listing([R4, R6])) == [rule_comment(R4), rule_comment(R6)]
    assert live_comments({"nftables": []}) == []
    assert live_comments(listing([R4], prio=100)) is None  # not the chain we render
    assert live_comments(listing([R4], extra_chain=True)) is None


class FakeNft:
    """Records every nft call; ``fail`` makes applies fail; the table it "holds" is the last
    applied batch's rules (listed back as nft does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.docs: list[dict[str, Any]] = []
        self.fail = False
        self.held: list[SnatRule] | None = None  # None: no table
        self.rules: list[SnatRule] = []

    async def __call__(self, *args: str, stdin: bytes | None = None, netns: str | None = None
                       ) -> tuple[int, str, str]:  # fmt: skip
        self.calls.append(args)
        if args[:2] == ("-j", "list"):
            if self.held is None:
                return 1, "", "Error: No such file or directory"
            return 0, json.dumps(listing(self.held)), ""
        if self.fail:
            return 1, "", "internal:0:0-0: Error: Could not process rule: Operation not permitted"
        assert stdin is not None
        doc = json.loads(stdin)
        self.docs.append(doc)
        self.held = list(self.rules) if len(doc["nftables"]) > 2 else None
        return 0, "", ""


async def test_set_active_follows_the_role_and_reports_errors() -> None:
    nft = FakeNft()
    nft.rules = [R4]
    t = SnatTable(NatConfig((R4,)), run=nft)
    assert t.status()["active"] is None
    with capture_logs() as logs:
        assert await t.set_active(True, "became master")
    assert nft.held == [R4] and t.status()["installed"]
    assert logs[-1] == {"event": "nat.snat", "table": "hacontrol_nat", "active": True, "rules": 1,
                        "reason": "became master", "log_level": "info",
                        "logger": "hacontrol.dataplane.snat"}  # fmt: skip
    assert await t.repair() and len(nft.docs) == 1  # matches: nothing applied
    nft.held = None  # someone deleted it
    assert await t.repair() and len(nft.docs) == 2 and nft.held == [R4]

    nft.fail = True
    with capture_logs() as logs:
        assert not await t.set_active(False, "became backup")
    assert logs[-1]["event"] == "nat.snat_error" and logs[-1]["log_level"] == "error"
    assert t.status()["error"] == (
        "nftables: hacontrol_nat: apply failed: internal:0:0-0: Error: Could not process rule: "
        "Operation not permitted"
    )
    assert not t.status()["installed"]
    nft.fail = False
    assert await t.repair() and nft.held is None and t.status()["error"] is None

    await t.close()
    assert nft.held is None and t.status()["active"] is False and t.status()["reason"] == "stop"


async def test_no_rules_never_touches_nftables_and_keep_on_close_keeps() -> None:
    nft = FakeNft()
    t = SnatTable(NatConfig(()), run=nft)
    assert await t.set_active(True, "x") and await t.repair()
    await t.close()
    assert nft.calls == []
    nft.rules = [R4]
    kept = SnatTable(NatConfig((R4,)), run=nft, keep_on_close=True)
    assert await kept.set_active(True, "single director")
    await kept.close()
    assert nft.held == [R4] and len(nft.docs) == 1
