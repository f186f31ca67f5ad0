"""The VRRPv3 transport: one raw IP socket (protocol 112) on the configured interface.

It owns the socket, the choice of this router's primary address, sending advertisements (to the
multicast group 224.0.0.18 / ff02::12 or to each unicast peer) and the checks on receive before
anything reaches the machine (RFC 5798 §7.1), each counted by a stable reason:

- ``ttl``: the IPv4 TTL / IPv6 hop limit is not 255 (the packet crossed a router);
- the codec's ``short`` / ``version`` / ``type`` / ``length`` / ``checksum``;
- ``vrid``: another virtual router on the segment (normal when several run: counted, not logged);
- ``foreign``: with unicast peers, a source that is not one of them;
- ``own``: our own packet looped back.

IPv4: the IP header is built here (``IP_HDRINCL``: TTL 255, DSCP CS6 like keepalived, the source
this module chose, so the checksum's pseudo-header is the one on the wire); the kernel fills the
length, id and header checksum. Received IPv4 packets carry their header (TTL read from it).
IPv6: the source (the interface's link-local address, as keepalived's default) is given per
packet (``IPV6_PKTINFO``); hop limit 255; the hop limit and the destination of received packets
come from ancillary data. The socket is bound to the interface (``SO_BINDTODEVICE``).
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import socket
import struct
from collections import Counter
from collections.abc import Callable

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha import vrrp_packet as vp
from hacontrol.ha.interfaces import HaIoError

__all__ = ["VrrpTransport", "primary_address"]

log = logs.get("hacontrol.ha")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
OnAdvert = Callable[[vp.Advert, Address, float], None]

SIOCGIFADDR = 0x8915
TOS_CS6 = 0xC0
IPV6_RECVPKTINFO, IPV6_PKTINFO, IPV6_RECVHOPLIMIT, IPV6_HOPLIMIT = 49, 50, 51, 52
IP_MULTICAST_ALL = 49


def primary_address(ifname: str, version: int) -> Address:
    """The interface's primary IPv4 address, or its IPv6 link-local address; HaIoError if none."""
    if version == 4:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                req = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()))
            except OSError as e:
                raise HaIoError(f"{ifname}: no IPv4 address ({e.strerror})") from None
        return ipaddress.IPv4Address(req[20:24])
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr, _, _, scope, _, name = line.split()
                if name == ifname and scope == "20":
                    return ipaddress.IPv6Address(bytes.fromhex(hexaddr))
    except OSError as e:
        raise HaIoError(f"/proc/net/if_inet6: {e.strerror}") from None
    raise HaIoError(f"{ifname}: no IPv6 link-local address")


class VrrpTransport:
    """Send and receive the advertisements of virtual router ``vrid`` on ``interface``."""

    def __init__(
        self,
        interface: str,
        vrid: int,
        *,
        version: int,
        peers: tuple[Address, ...],
        source: Address | None,
        clock: Clock,
        on_advert: OnAdvert,
    ) -> None:
        self.interface, self.vrid, self.version = interface, vrid, version
        self.peers, self.source, self.clock = peers, source, clock
        self.on_advert = on_advert
        self.group: Address = vp.GROUP4 if version == 4 else vp.GROUP6
        self.sent = 0
        self.received = 0
        self.dropped: Counter[str] = Counter()
        self.errors = 0
        self._sock: socket.socket | None = None
        self._index = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def destinations(self) -> tuple[Address, ...]:
        return self.peers or (self.group,)

    def open(self) -> None:
        """Open the socket and start reading; HaIoError when the interface cannot be used."""
        try:
            self._index = socket.if_nametoindex(self.interface)
        except OSError:
            raise HaIoError(f"interface {self.interface} does not exist") from None
        if self.source is None:
            self.source = primary_address(self.interface, self.version)
        fam = socket.AF_INET if self.version == 4 else socket.AF_INET6
        s = socket.socket(fam, socket.SOCK_RAW, vp.PROTO)
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            if self.version == 4:
                self._setup4(s)
            else:
                self._setup6(s)
        except OSError as e:
            s.close()
            raise HaIoError(f"VRRP socket on {self.interface}: {e.strerror or e}") from None
        self._sock = s
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(s.fileno(), self._readable)

    def _setup4(self, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        mreqn = vp.GROUP4.packed + bytes(4) + struct.pack("@i", self._index)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        if not self.peers:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)

    def _setup6(self, s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self._index)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
        if not self.peers:
            mreq = vp.GROUP6.packed + struct.pack("@I", self._index)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # -- send ------------------------------------------------------------------------------

    def send(self, priority: int, max_adver_cs: int, addresses: tuple[Address, ...]) -> None:
        """One advertisement to every destination; an error is counted and logged, not raised
        (the next advertisement retries)."""
        s, src = self._sock, self.source
        if s is None or src is None:
            return
        adv = vp.Advert(self.vrid, priority, max_adver_cs, addresses)
        for dst in self.destinations:
            msg = vp.encode(adv, src, dst)
            try:
                if self.version == 4:
                    head = struct.pack("!BBHHHBBH4s4s", 0x45, TOS_CS6, 20 + len(msg), 0, 0, 255,
                                       vp.PROTO, 0, src.packed, dst.packed)  # fmt: skip
                    s.sendto(head + msg, (str(dst), 0))
                else:
                    info = src.packed + struct.pack("@I", self._index)
                    s.sendmsg([msg], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, info)],
                               0, (str(dst), 0, 0, self._index))  # fmt: skip
                self.sent += 1
            except OSError as e:
                self.errors += 1
                log.warning("vrrp.send_error", destination=str(dst), reason=str(e))

    # -- receive ---------------------------------------------------------------------------

    def _drop(self, reason: str, source: object, detail: str) -> None:
        self.dropped[reason] += 1
        if reason not in ("vrid", "own"):
            log.warning("vrrp.drop", reason=reason, source=str(source), detail=detail)

    def _readable(self) -> None:
        for _ in range(64):  # bounded per wake-up
            s = self._sock
            if s is None:
                return
            try:
                if self.version == 4:
                    data, _ = s.recvfrom(65535)
                    got = self._ip4(data)
                else:
                    data, anc, _, addr = s.recvmsg(65535, 256)
                    got = self._ip6(data, anc, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.errors += 1
                log.warning("vrrp.recv_error", reason=str(e))
                return
            if got is not None:
                self._accept(*got)

    def _ip4(self, data: bytes) -> tuple[bytes, Address, Address, int] | None:
        if len(data) < 20:
            self._drop("short", "-", "no IPv4 header")
            return None
        ihl = (data[0] & 0x0F) * 4
        src = ipaddress.IPv4Address(data[12:16])
        dst = ipaddress.IPv4Address(data[16:20])
        total = struct.unpack_from("!H", data, 2)[0]
        return data[ihl : max(ihl, min(total, len(data)))], src, dst, data[8]

    def _ip6(
        self, data: bytes, anc: list[tuple[int, int, bytes]], addr: tuple[str, ...]
    ) -> tuple[bytes, Address, Address, int] | None:
        src = ipaddress.IPv6Address(addr[0].split("%")[0])
        dst: Address | None = None
        hops = -1
        for level, kind, value in anc:
            if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(value) >= 16:
                dst = ipaddress.IPv6Address(value[:16])
            elif level == socket.IPPROTO_IPV6 and kind == IPV6_HOPLIMIT and len(value) >= 4:
                hops = struct.unpack("@i", value[:4])[0]
        if dst is None:
            self._drop("short", src, "no destination address (IPV6_PKTINFO)")
            return None
        return data, src, dst, hops

    def _accept(self, msg: bytes, src: Address, dst: Address, ttl: int) -> None:
        if src == self.source:
            self._drop("own", src, "our own advertisement")
            return
        if ttl != 255:
            self._drop("ttl", src, f"TTL/hop limit {ttl}, not 255: it crossed a router")
            return
        try:
            adv = vp.decode(msg, src, dst)
        except vp.VrrpError as e:
            self._drop(e.reason, src, str(e))
            return
        if adv.vrid != self.vrid:
            self._drop("vrid", src, f"virtual router {adv.vrid}, ours is {self.vrid}")
            return
        if self.peers and src not in self.peers:
            self._drop("foreign", src, "the source is not one of ha.vrrp.unicast_peers")
            return
        self.received += 1
        self.on_advert(adv, src, self.clock())

    def counters(self) -> dict[str, object]:
        return {"sent": self.sent, "received": self.received, "dropped": dict(self.dropped),
                "errors": self.errors}  # fmt: skip
