"""Source NAT of the real servers' own outbound traffic, following the active role.

An LVS-NAT director is the real servers' gateway: their own connections to the outside (updates,
DNS, calls to other APIs) leave through it and need a source address the outside can answer, the
seed's ``iptables -t nat -A POSTROUTING -s <servers> -j SNAT --to <VIP>``. This module owns ONE
nftables table for that (``table inet hacontrol_nat`` by default; ``nat:`` in the config), with
one chain ``snat_post`` (nat postrouting, priority 90) and one rule per ``nat.snat[]`` entry::

    ip saddr 198.51.100.0/24 [oifname "eth0"] snat ip to 192.0.2.10   comment "hc snat ..."

The table is installed while this director is active (holds the VIPs) and deleted when it is not,
so the SNAT address is always one the node holds; it is replaced atomically in one nft batch
(add + delete + add, as the data plane's table), through ``hacontrol.dataplane.nft.run_nft``.

With both planes: on IPVS the rule only sees traffic IPVS does not handle (IPVS-forwarded packets
are untracked unless ``net.ipv4.vs.conntrack=1``, and then nat rules see them too, which lets a real
server reach a VIP service: hairpin). On the nftables plane, whose table masquerades every
non-DNATed packet from a real server at priority 100, this chain runs first (90) and a connection's
first NAT binding wins, so the sources named here leave with ``to`` and the others keep the
plane's masquerade. ``render_snat`` is pure; ``SnatTable`` runs nft.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft import run_nft
from hacontrol.model import NatConfig, SnatRule

Json = dict[str, Any]
FAMILY = "inet"
CHAIN = "snat_post"
PRIORITY = 90  # srcnat - 10: before the nftables data plane's masquerade (100)
NftRunner = Callable[..., Awaitable[tuple[int, str, str]]]

log = logs.get("hacontrol.dataplane.snat")


def rule_comment(rule: SnatRule) -> str:
    """The comment naming a rule; the read-back compares these (an edited rule shows up)."""
    oif = f" oif {rule.out_interface}" if rule.out_interface else ""
    return f"hc snat {rule.source} to {rule.to}{oif}"


def rule_expr(rule: SnatRule) -> list[Json]:
    fam = "ip" if rule.source.version == 4 else "ip6"
    net = rule.source
    right: Any = (
        str(net.network_address)
        if net.prefixlen == net.max_prefixlen
        else {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    )
    expr: list[Json] = [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": fam, "field": "saddr"}},
                "right": right,
            }
        }
    ]
    if rule.out_interface:
        expr.append(
            {
                "match": {
                    "op": "==",
                    "left": {"meta": {"key": "oifname"}},
                    "right": rule.out_interface,
                }
            }
        )
    expr.append({"snat": {"family": fam, "addr": str(rule.to)}})
    return expr


def render_snat(rules: Sequence[SnatRule], table: str, active: bool) -> Json:
    """The nft JSON batch making ``table`` hold ``rules`` (active) or not exist (inactive, or no
    rules). ``add`` before ``delete`` so the batch works whether the table exists or not."""
    ident = {"family": FAMILY, "name": table}
    batch: list[Json] = [{"add": {"table": ident}}, {"delete": {"table": ident}}]
    if active and rules:
        batch.append({"add": {"table": ident}})
        chain = {"family": FAMILY, "table": table, "name": CHAIN}
        batch.append(
            {
                "add": {
                    "chain": {
                        **chain,
                        "type": "nat",
                        "hook": "postrouting",
                        "prio": PRIORITY,
                        "policy": "accept",
                    }
                }
            }
        )
        for rule in rules:
            batch.append(
                {
                    "add": {
                        "rule": {
                            "family": FAMILY,
                            "table": table,
                            "chain": CHAIN,
                            "expr": rule_expr(rule),
                            "comment": rule_comment(rule),
                        }
                    }
                }
            )
    return {"nftables": batch}


def live_comments(doc: Json) -> list[str] | None:
    """The rule comments of our chain in ``nft -j list table`` output; None if the chain is not
    the one we render (wrong hook, priority or type: a hand-made table of the same name)."""
    comments: list[str] = []
    chain_ok = False
    for item in doc.get("nftables", []):
        if "chain" in item and item["chain"].get("name") == CHAIN:
            c = item["chain"]
            chain_ok = (c.get("type"), c.get("hook"), c.get("prio")) == (
                "nat",
                "postrouting",
                PRIORITY,
            )
        elif "chain" in item:
            return None  # a chain we never make
        elif "rule" in item:
            comments.append(str(item["rule"].get("comment", "")))
    return comments if chain_ok or not comments else None


class SnatTable:
    """The SNAT table of one director: ``set_active`` on every role change, ``repair`` on the
    periodic resync, ``close`` on stop. Errors are logged (``nat.snat_error``), kept for the
    status and returned as False; they never raise into the caller (an HA transition)."""

    def __init__(
        self,
        nat: NatConfig,
        *,
        netns: str | None = None,
        keep_on_close: bool = False,
        run: NftRunner = run_nft,
    ) -> None:
        self.rules = nat.snat
        self.table = nat.table
        self.netns = netns  # run nft in this named namespace (lab, tests)
        self.keep_on_close = keep_on_close  # single director with keep_on_stop: leave it
        self._run = run
        self._lock = asyncio.Lock()
        self.active: bool | None = None  # None: not told yet
        self.reason = ""
        self.error: str | None = None
        self.applies = 0

    def _want(self) -> list[str]:
        return [rule_comment(r) for r in self.rules] if self.active else []

    async def _nft(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        return await self._run(*args, stdin=stdin, netns=self.netns)

    async def _apply(self, active: bool) -> None:
        doc = render_snat(self.rules, self.table, active)
        rc, _, err = await self._nft("-j", "-f", "-", stdin=json.dumps(doc).encode())
        if rc != 0:
            why = [line for line in err.splitlines() if "Error:" in line] or [err[-300:]]
            raise DataplaneError(f"nftables: {self.table}: apply failed: {why[0][:300]}")
        self.applies += 1

    async def set_active(self, active: bool, reason: str) -> bool:
        """Install (active) or delete (backup) the table; True when the kernel now matches."""
        async with self._lock:
            self.active, self.reason = active, reason
            if not self.rules:
                return True  # nothing configured: never touch nftables
            try:
                await self._apply(active)
            except DataplaneError as e:
                self.error = str(e)
                log.error(
                    "nat.snat_error", table=self.table, active=active, reason=reason, error=str(e)
                )
                return False
            self.error = None
            log.info(
                "nat.snat", table=self.table, active=active, rules=len(self.rules), reason=reason
            )
            return True

    async def read(self) -> list[str] | None:
        """The comments of the rules the kernel holds in our table ([] when it does not exist);
        None when the table is not one we rendered."""
        rc, out, err = await self._nft("-j", "list", "table", FAMILY, self.table)
        if rc != 0:
            if "No such file or directory" in err:
                return []
            raise DataplaneError(f"nftables: list table {self.table}: {err}")
        try:
            return live_comments(json.loads(out))
        except (ValueError, AttributeError) as e:
            raise DataplaneError(f"nftables: cannot parse table {self.table}: {e}") from e

    async def repair(self) -> bool:
        """Compare the kernel with the role last set and re-apply on a difference (a flushed
        ruleset, a hand edit); True when they match afterwards."""
        if self.active is None or not self.rules:
            return True
        async with self._lock:
            try:
                live = await self.read()
                if live == self._want():
                    return True
                log.warning(
                    "nat.snat_repair",
                    table=self.table,
                    active=self.active,
                    reason="drift",
                    have=live,
                )
                await self._apply(self.active)
            except DataplaneError as e:
                self.error = str(e)
                log.error(
                    "nat.snat_error",
                    table=self.table,
                    active=self.active,
                    reason="repair",
                    error=str(e),
                )
                return False
            self.error = None
            return True

    async def close(self) -> None:
        """Delete the table unless ``keep_on_close`` (a lone director keeping its tables)."""
        if self.rules and not self.keep_on_close:
            await self.set_active(False, "stop")

    def status(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rules": [rule_comment(r) for r in self.rules],
            "active": self.active,
            "reason": self.reason,
            "installed": bool(self.active and self.rules and self.error is None),
            "error": self.error,
        }
