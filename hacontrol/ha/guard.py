"""The heartbeat guard: the kernel drops heartbeat-port junk that does not come from ``ha.peers``.

A flood at the heartbeat port (60,000 packets/s of junk) used to cost the daemon's event loop a
wakeup, a decode and a log-rate check per packet, filled the socket buffer, and real heartbeats
were lost. ``HeartbeatGuard`` owns one small nftables table (``<nft_table>_hb``, inet family):
a filter chain on prerouting at raw priority (-300: before conntrack, so junk creates no
connection entries) whose rules, for ``udp dport <port> [ip daddr <bind>]``, drop (and count in
the named counter ``junk``): what does not come from the ``peers`` set (the addresses of
``ha.peers``); what does not start with the heartbeat magic (``@th,64,32``); and, per path
(source . destination, a dynamic set), what exceeds ``PATH_RATE`` packets/s, so a flood from a
peer's (spoofed) address costs the daemon at most that many MAC checks per second and starves
only the flooded path, not the other path nor the event loop. What passes reaches the socket,
where ``hacontrol.ha.packet.decode`` refuses bad size and magic before it computes any MAC.
The table is written atomically (add + delete + add, one ``nft -j -f``
transaction, through ``hacontrol.dataplane.nft.run_nft``), checked and repaired on every resync
(``ensure``), and removed at stop. ``GuardedHa`` wraps the HA pair member so the guard is up
before the first heartbeat is read and gone after the last. Log events: ``ha.guard`` (install,
repair, remove, error; always with a reason). Failing to install is logged, never fatal: the
daemon then runs as it did without the guard.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft import run_nft
from hacontrol.ha.handoff_rules import Triple
from hacontrol.ha.interfaces import Notifier
from hacontrol.ha.packet import MAGIC
from hacontrol.model import Endpoint
from hacontrol.process import HaComponent
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.ha.guard")

Json = dict[str, Any]
CHAIN = "junk_in"
COUNTER = "junk"
MAGIC_INT = int.from_bytes(MAGIC, "big")
PATH_RATE = 1000  # packets/s per (source, destination) path: heartbeats need ~10-50


class HeartbeatGuard:
    """The nftables table shedding heartbeat junk (pure rendering, I/O through ``run_nft``)."""

    def __init__(
        self, table: str, bind: Endpoint, peers: list[Endpoint], *, netns: str | None = None
    ) -> None:
        self.table, self.bind, self.netns = table, bind, netns
        self.family = bind.address.version
        self.peers = sorted({str(p.address) for p in peers if p.address.version == self.family})

    def _obj(self, kind: str, **fields: Any) -> Json:
        return {kind: {"family": "inet", "table": self.table, **fields}}

    def render(self) -> Json:
        """The batch that replaces the guard's table."""
        ident = {"family": "inet", "name": self.table}
        ip = "ip" if self.family == 4 else "ip6"
        addr_type = "ipv4_addr" if self.family == 4 else "ipv6_addr"
        peers: Json = {"name": "peers", "type": addr_type}
        if self.peers:
            peers["elem"] = list(self.peers)
        port: list[Json] = [
            {
                "match": {
                    "op": "==",
                    "left": {"payload": {"protocol": "udp", "field": "dport"}},
                    "right": self.bind.port,
                }
            },
        ]
        if not self.bind.address.is_unspecified:
            port.append(
                {
                    "match": {
                        "op": "==",
                        "left": {"payload": {"protocol": ip, "field": "daddr"}},
                        "right": str(self.bind.address),
                    }
                }
            )
        shed: list[Json] = [{"counter": COUNTER}, {"drop": None}]
        not_peer = {
            "match": {
                "op": "!=",
                "right": "@peers",
                "left": {"payload": {"protocol": ip, "field": "saddr"}},
            }
        }
        # the UDP payload's first 4 bytes (offset 64 bits into the transport header): the magic
        bad_magic = {
            "match": {
                "op": "!=",
                "right": MAGIC_INT,
                "left": {"payload": {"base": "th", "offset": 64, "len": 32}},
            }
        }
        path = {
            "concat": [
                {"payload": {"protocol": ip, "field": "saddr"}},
                {"payload": {"protocol": ip, "field": "daddr"}},
            ]
        }
        over = {
            "set": {
                "op": "update",
                "elem": path,
                "set": "@paths",
                "stmt": [
                    {
                        "limit": {
                            "rate": PATH_RATE,
                            "burst": PATH_RATE // 10,
                            "per": "second",
                            "inv": True,
                        }
                    }
                ],
            }
        }
        objs = [
            self._obj("set", **peers),
            self._obj(
                "set",
                name="paths",
                type=[addr_type, addr_type],
                flags=["timeout"],
                timeout=60,
                size=1024,
            ),
            self._obj("counter", name=COUNTER),
            self._obj(
                "chain", name=CHAIN, type="filter", hook="prerouting", prio=-300, policy="accept"
            ),
            self._obj("rule", chain=CHAIN, expr=[*port, not_peer, *shed], comment="hc not a peer"),
            self._obj("rule", chain=CHAIN, expr=[*port, bad_magic, *shed], comment="hc bad magic"),
            self._obj("rule", chain=CHAIN, expr=[*port, over, *shed], comment="hc path over rate"),
        ]
        batch = [{"add": {"table": ident}}, {"delete": {"table": ident}}, {"add": {"table": ident}}]
        return {"nftables": [*batch, *({"add": o} for o in objs)]}

    async def _run(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        return await run_nft(*args, stdin=stdin, netns=self.netns, limit=10.0)

    async def install(self, reason: str = "start") -> None:
        rc, _, err = await self._run("-j", "-f", "-", stdin=json.dumps(self.render()).encode())
        if rc != 0:
            raise DataplaneError(f"ha guard: nft failed: {err[-300:]}")
        log.info("ha.guard", action="install", table=self.table, peers=self.peers, reason=reason)

    async def intact(self) -> bool:
        """Does the kernel hold the guard as rendered (peers, counter, chain, one rule)?"""
        rc, out, _ = await self._run("-j", "list", "table", "inet", self.table)
        if rc != 0:
            return False
        try:
            items = json.loads(out)["nftables"]
        except (ValueError, KeyError):
            return False
        peers = [
            sorted(i["set"].get("elem", []))
            for i in items
            if i.get("set", {}).get("name") == "peers"
        ]
        chains = [i["chain"] for i in items if "chain" in i]
        rules = [i for i in items if "rule" in i]
        counters = [i for i in items if "counter" in i]
        return (
            peers == [self.peers]
            and len(rules) == 3
            and len(counters) == 1
            and [(c.get("hook"), c.get("prio")) for c in chains] == [("prerouting", -300)]
        )

    async def ensure(self) -> bool:
        """Repair the guard if it is missing or edited; True when it had to."""
        if await self.intact():
            return False
        await self.install("repair: the table was missing or edited")
        return True

    async def dropped(self) -> int:
        """Packets shed so far (the named counter; 0 when the table is gone)."""
        rc, out, _ = await self._run("-j", "list", "counter", "inet", self.table, COUNTER)
        if rc != 0:
            return 0
        for item in json.loads(out).get("nftables", []):
            if "counter" in item:
                return int(item["counter"].get("packets", 0))
        return 0

    async def remove(self) -> None:
        rc, _, err = await self._run("delete", "table", "inet", self.table)
        if rc != 0 and "No such file" not in err:
            raise DataplaneError(f"ha guard: cannot delete table {self.table}: {err[-300:]}")
        log.info("ha.guard", action="remove", table=self.table, reason="stop")


class GuardedHa:
    """An HA pair member with the heartbeat guard up for as long as it runs (``HaComponent``)."""

    def __init__(self, inner: HaComponent, guard: HeartbeatGuard, repair_every: float) -> None:
        self.inner, self.guard, self.repair_every = inner, guard, repair_every
        self._task: asyncio.Task[None] | None = None

    @property
    def role(self) -> str:
        return self.inner.role

    def reconfigure(
        self,
        *,
        notifier: Notifier | None = None,
        digest: str | None = None,
        handoff_services: tuple[list[Triple], list[Triple]] | None = None,
    ) -> None:
        self.inner.reconfigure(notifier=notifier, digest=digest, handoff_services=handoff_services)

    async def start(self) -> None:
        try:
            await self.guard.install()
        except DataplaneError as exc:
            log.error("ha.guard", action="install", result="error", reason=str(exc))
        await self.inner.start()
        self._task = asyncio.create_task(self._repair(), name="hacontrol-ha-guard")

    async def _repair(self) -> None:
        while True:
            await asyncio.sleep(self.repair_every)
            try:
                await self.guard.ensure()
            except DataplaneError as exc:
                log.error("ha.guard", action="repair", result="error", reason=str(exc))

    async def stop(self, graceful: bool = True) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        try:
            await self.inner.stop(graceful)
        finally:
            try:
                await self.guard.remove()
            except DataplaneError as exc:
                log.error("ha.guard", action="remove", result="error", reason=str(exc))

    def status(self) -> dict[str, Any]:
        return self.inner.status()

    async def drill_handover(self) -> dict[str, Any]:
        return await self.inner.drill_handover()

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        return await self.inner.drill_fault(seconds)
