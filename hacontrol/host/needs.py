"""Which sysctls a director needs for its config: a pure function of the config and the plane.

``required_sysctls(config, plane)`` -> one ``SysctlNeed(key, want, why)`` per setting, a key
needed for several reasons listed once with every reason. What the director needs, by forwarding:

* ``nat`` (IPv4 VIP): ``net.ipv4.ip_forward=1``; the real servers' replies are routed through the
  director back to the clients (both planes). IPv6 VIP: ``net.ipv6.conf.all.forwarding=1``.
* ``nat.snat[]``: the same forwarding switch of the source's family (the real servers' own
  traffic is routed through the director).
* ``nat.snat[]`` with NAT services on the IPVS plane: ``net.ipv4.vs.conntrack=1`` (it governs
  IPv6 too). Without it IPVS leaves the packets it forwards untracked, so no nftables rule sees
  them: the real servers' own connections are still source-NATed, but a real server reaching a
  NAT service's VIP (hairpin) is not, and stateful rules cannot match IPVS traffic.
* ``dr`` and ``tunnel``: nothing on the director. ``arp_ignore=1`` / ``arp_announce=2`` (and the
  VIP on ``lo``; for tunnel an ``ipip`` device and ``rp_filter`` off) belong on the REAL servers,
  which the director cannot check; the director's VIP interface is an ordinary one, and IPVS
  sends DR/tunnel packets from its LOCAL_IN hook, so even ``ip_forward`` is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacontrol.model import Config

FORWARD = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
VS_CONNTRACK = "net.ipv4.vs.conntrack"


@dataclass(frozen=True)
class SysctlNeed:
    """A setting the config needs: ``key`` (dotted, as sysctl(8) names it) must read ``want``."""

    key: str
    want: str
    why: str


def required_sysctls(config: Config, plane: str) -> list[SysctlNeed]:
    """The sysctls ``config`` needs on a director running data plane ``plane`` (ipvs | nftables |
    memory: nothing is needed when nothing forwards). In a stable order (first reason first)."""
    if plane == "memory":
        return []
    whys: dict[tuple[str, str], list[str]] = {}

    def need(key: str, want: str, why: str) -> None:
        whys.setdefault((key, want), []).append(why)

    nat_services = [s for s in config.services if s.forwarding == "nat"]
    for svc in nat_services:
        need(
            FORWARD[svc.vip.version],
            "1",
            f"service {svc.name}: NAT replies from the real servers are forwarded to the clients",
        )
    for i, rule in enumerate(config.nat.snat):
        need(
            FORWARD[rule.source.version],
            "1",
            f"nat.snat[{i}]: the real servers' own traffic from {rule.source} is forwarded",
        )
    if plane == "ipvs" and config.nat.snat and nat_services:
        need(
            VS_CONNTRACK,
            "1",
            "nat.snat with IPVS NAT services: IPVS keeps conntrack entries, so the SNAT also "
            "applies to connections IPVS forwards (a real server reaching a VIP) and stateful "
            "rules see them",
        )
    return [SysctlNeed(k, w, "; ".join(reasons)) for (k, w), reasons in whys.items()]
