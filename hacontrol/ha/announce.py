"""Gratuitous ARP and unsolicited neighbour advertisements for the VIP group.

pyroute2 has no packet sender, so the frames are built here byte by byte (pure functions,
unit-tested against hand-computed bytes) and sent:

- IPv4: an ARP request with sender IP = target IP = VIP and sender MAC = the interface's MAC,
  to the Ethernet broadcast, over a raw AF_PACKET socket bound to the interface;
- IPv6: an unsolicited neighbour advertisement (override flag, target link-layer option) to
  ff02::1 over an ICMPv6 raw socket with hop limit 255, sourced from the VIP when possible.

``Announcer`` sends a burst (``count`` rounds ``interval`` apart, one packet per VIP per round)
after the VIPs are taken, and ``refresh_forever`` repeats one round every ``refresh`` seconds.
Packets sent are counted in ``metrics.announcements{family}``. A send error is logged
(``ha.announce.error``) and never raised: the VIP is already ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from hacontrol import logs
from hacontrol.metrics import Metrics
from hacontrol.model import AnnounceConfig, VipConfig

log = logs.get("hacontrol.ha.announce")

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ICMPV6_NA = 136
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
ND_OPT_TARGET_LLADDR = 2

# not in the socket module of every Python build
_IPV6_MULTICAST_HOPS = getattr(socket, "IPV6_MULTICAST_HOPS", 18)
_IPV6_UNICAST_HOPS = getattr(socket, "IPV6_UNICAST_HOPS", 16)
_IPV6_MULTICAST_LOOP = getattr(socket, "IPV6_MULTICAST_LOOP", 19)
_IPV6_MULTICAST_IF = getattr(socket, "IPV6_MULTICAST_IF", 17)
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


# -- pure frame builders -------------------------------------------------------------------------


def parse_mac(text: str) -> bytes:
    """``"02:00:00:00:00:0a"`` -> 6 bytes; ValueError otherwise."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def garp_frame(mac: bytes, vip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet frame carrying a gratuitous ARP request for ``vip`` from ``mac`` (42 bytes).

    Ethernet: dst ff:ff:ff:ff:ff:ff, src mac, type 0x0806. ARP: htype 1 (Ethernet), ptype
    0x0800, hlen 6, plen 4, op 1 (request), sha mac, spa vip, tha 00:00:00:00:00:00, tpa vip.
    """
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    ip = vip.packed
    eth = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, 1) + mac + ip + b"\x00" * 6 + ip
    return eth + arp


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def icmpv6_checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """The ICMPv6 checksum over the IPv6 pseudo-header and ``message`` (checksum field zero)."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), socket.IPPROTO_ICMPV6)
    return inet_checksum(pseudo + message)


def na_message(
    mac: bytes,
    vip: ipaddress.IPv6Address,
    *,
    router: bool = False,
    src: ipaddress.IPv6Address | None = None,
    dst: ipaddress.IPv6Address = ALL_NODES,
) -> bytes:
    """An unsolicited neighbour advertisement for ``vip`` (the ICMPv6 message, 32 bytes).

    type 136, code 0, checksum, flags (override; router if ``router``; never solicited),
    target ``vip``, option 2 (target link-layer address, length 1 = 8 bytes) carrying ``mac``.
    The checksum is computed for ``src`` (default: the VIP itself) -> ``dst``; the kernel
    recomputes it for the addresses it really uses on an ICMPv6 raw socket.
    """
    if len(mac) != 6:
        raise ValueError("MAC must be 6 bytes")
    flags = NA_FLAG_OVERRIDE | (NA_FLAG_ROUTER if router else 0)
    option = struct.pack("!BB", ND_OPT_TARGET_LLADDR, 1) + mac
    body = struct.pack("!I", flags) + vip.packed + option
    zero = struct.pack("!BBH", ICMPV6_NA, 0, 0) + body
    csum = icmpv6_checksum(src or vip, dst, zero)
    return struct.pack("!BBH", ICMPV6_NA, 0, csum) + body


# -- sending ------------------------------------------------------------------------------------


def _is_router(ifname: str) -> bool:
    """IPv6 forwarding on ``ifname``: then our NAs carry the router flag (NAT-mode gateway)."""
    try:
        return Path(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding").read_text().strip() == "1"
    except OSError:
        return False


class _Sockets:
    """Sockets for one round or burst, opened lazily per interface, closed together."""

    def __init__(self) -> None:
        self.packet: dict[str, tuple[socket.socket, bytes]] = {}
        self.icmp6: dict[tuple[str, ipaddress.IPv6Address], socket.socket] = {}

    def arp(self, ifname: str) -> tuple[socket.socket, bytes]:
        if ifname not in self.packet:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # proto 0: receive nothing
            try:
                s.bind((ifname, 0))
                mac = bytes(s.getsockname()[4])
                s.setblocking(False)
            except OSError:
                s.close()
                raise
            self.packet[ifname] = (s, mac)
        return self.packet[ifname]

    def na(self, ifname: str, vip: ipaddress.IPv6Address) -> socket.socket:
        key = (ifname, vip)
        if key not in self.icmp6:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            try:
                index = socket.if_nametoindex(ifname)
                s.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, ifname.encode())
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_UNICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_LOOP, 0)
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_MULTICAST_IF, index)
                with contextlib.suppress(OSError):  # not configured (yet): kernel picks source
                    s.bind((str(vip), 0, 0, index))
                s.setblocking(False)
            except OSError:
                s.close()
                raise
            self.icmp6[key] = s
        return self.icmp6[key]

    def close(self) -> None:
        for s, _ in self.packet.values():
            s.close()
        for s6 in self.icmp6.values():
            s6.close()
        self.packet.clear()
        self.icmp6.clear()


def _family(vip: VipConfig) -> str:
    return "ipv4" if vip.address.version == 4 else "ipv6"


# Linux ignores an ARP update that arrives within the neighbour entry's locktime (default 1 s)
# of its last update: if the old holder answered the client's ARP just before the move, the whole
# burst can be ignored and the client keeps the old MAC until its entry goes stale. One more round
# after that window fixes it (keepalived's garp_master_delay serves the same purpose).
REPEAT_AFTER = 1.2


class Announcer:
    """Announces the VIP group: ``burst()`` after a takeover, ``refresh_forever()`` meanwhile."""

    def __init__(
        self,
        vips: Sequence[VipConfig],
        config: AnnounceConfig | None = None,
        metrics: Metrics | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.vips = tuple(vips)
        self.config = config or AnnounceConfig()
        self.metrics = metrics
        self._sleep = sleep
        self.sent_total = 0

    def _send_one(self, socks: _Sockets, vip: VipConfig) -> None:
        addr = vip.address.ip
        if isinstance(addr, ipaddress.IPv4Address):
            s, mac = socks.arp(vip.interface)
            s.sendto(garp_frame(mac, addr), (vip.interface, ETH_P_ARP))
        else:
            s6 = socks.na(vip.interface, addr)
            mac = socks.arp(vip.interface)[1]
            msg = na_message(mac, addr, router=_is_router(vip.interface))
            s6.sendto(msg, (str(ALL_NODES), 0, 0, socket.if_nametoindex(vip.interface)))

    def _round(self, socks: _Sockets, errors: dict[str, str]) -> dict[str, int]:
        sent = {"ipv4": 0, "ipv6": 0}
        for vip in self.vips:
            fam = _family(vip)
            try:
                self._send_one(socks, vip)
            except OSError as e:
                errors[str(vip.address.ip)] = f"{vip.interface}: {e.strerror or e}"
                continue
            sent[fam] += 1
            if self.metrics is not None:
                self.metrics.announcements.labels(family=fam).inc()
        return sent

    async def burst(
        self,
        reason: str = "took the VIPs",
        count: int | None = None,
        interval: float | None = None,
    ) -> int:
        """``count`` rounds ``interval`` apart; returns the packets sent (all VIPs, all rounds)."""
        count = self.config.count if count is None else count
        interval = self.config.interval if interval is None else interval
        totals = {"ipv4": 0, "ipv6": 0}
        errors: dict[str, str] = {}
        socks = _Sockets()
        try:
            for i in range(max(count, 0)):
                if i:
                    await self._sleep(interval)
                for fam, n in self._round(socks, errors).items():
                    totals[fam] += n
        finally:
            socks.close()
        return self._report(totals, errors, reason, count)

    async def once(self, reason: str = "refresh") -> int:
        """One round: one packet per VIP."""
        return await self.burst(reason, count=1)

    async def refresh_forever(self) -> None:
        """One round ``REPEAT_AFTER`` seconds after the take, then one every ``refresh`` seconds
        until cancelled (none if ``refresh`` is 0)."""
        await self._sleep(REPEAT_AFTER)
        await self.once("repeat")
        if self.config.refresh <= 0:
            return
        while True:
            await self._sleep(self.config.refresh)
            await self.once("refresh")

    def _report(
        self, totals: dict[str, int], errors: dict[str, str], reason: str, rounds: int
    ) -> int:
        sent = totals["ipv4"] + totals["ipv6"]
        self.sent_total += sent
        if errors:
            log.warning("ha.announce.error", reason=reason, errors=errors, sent=sent)
        log.info(
            "ha.announce",
            reason=reason,
            rounds=rounds,
            ipv4=totals["ipv4"],
            ipv6=totals["ipv6"],
            sent=sent,
        )
        return sent
