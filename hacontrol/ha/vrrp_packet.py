"""The VRRPv3 advertisement codec (RFC 5798 §5): bytes <-> ``Advert``, and its checksum.

Pure: no sockets. What it owns:

- the packet (IP protocol 112, after the IP header; §5.2):

      0                   1                   2                   3
      |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
      |(rsvd) |     Max Adver Int     |          Checksum             |
      |                      IPvX Address(es) ...                     |

  version 3, type 1 (ADVERTISEMENT), max advertisement interval in centiseconds (12 bits),
  4-byte IPv4 or 16-byte IPv6 addresses;
- the checksum (§5.2.8): the Internet checksum over the VRRP message and the IPv4 or IPv6
  pseudo-header (source, destination, protocol 112, VRRP length), as keepalived computes it for
  VRRPv3. keepalived before 2.1 put the multicast group (224.0.0.18) in the pseudo-header of a
  unicast IPv4 advertisement; ``decode`` accepts that too and says so (``Advert.legacy_sum``);
- ``decode`` raises ``VrrpError`` with a stable ``reason`` (``short``, ``version``, ``type``,
  ``length``, ``checksum``) and never anything else, whatever the bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from hacontrol.ha.announce import inet_checksum

__all__ = [
    "GROUP4",
    "GROUP6",
    "MAX_ADVER_CS",
    "PROTO",
    "Advert",
    "VrrpError",
    "checksum",
    "decode",
    "encode",
]

PROTO = 112
VERSION = 3
TYPE_ADVERT = 1
GROUP4 = ipaddress.IPv4Address("224.0.0.18")
GROUP6 = ipaddress.IPv6Address("ff02::12")
MAX_ADVER_CS = 0x0FFF  # 40.95 s
HEADER = struct.Struct("!BBBBHH")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class VrrpError(ValueError):
    """An advertisement that cannot be read; ``reason`` is a stable word for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Advert:
    """One VRRPv3 advertisement. ``addresses`` are all IPv4 or all IPv6."""

    vrid: int
    priority: int
    max_adver_cs: int
    addresses: tuple[Address, ...]
    legacy_sum: bool = False  # checksum over the multicast group, not the unicast destination


def _pseudo(src: Address, dst: Address, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, PROTO, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, PROTO)


def checksum(src: Address, dst: Address, message: bytes) -> int:
    """The RFC 5798 checksum of ``message`` (its checksum field zero) between src and dst."""
    return inet_checksum(_pseudo(src, dst, len(message)) + message)


def encode(adv: Advert, src: Address, dst: Address) -> bytes:
    """The advertisement's bytes, checksummed for the IP header src -> dst."""
    if not 1 <= adv.vrid <= 255 or not 0 <= adv.priority <= 255:
        raise ValueError(f"vrid {adv.vrid} / priority {adv.priority} out of range")
    if not 1 <= adv.max_adver_cs <= MAX_ADVER_CS:
        raise ValueError(f"max advertisement interval {adv.max_adver_cs} cs out of 1..4095")
    if any(a.version != src.version for a in adv.addresses) or len(adv.addresses) > 255:
        raise ValueError("addresses must be of the source's family, at most 255")
    body = b"".join(a.packed for a in adv.addresses)
    head = HEADER.pack(
        VERSION << 4 | TYPE_ADVERT, adv.vrid, adv.priority, len(adv.addresses),
        adv.max_adver_cs, 0,
    )  # fmt: skip
    msg = head + body
    return msg[:6] + struct.pack("!H", checksum(src, dst, msg)) + msg[8:]


def decode(data: bytes, src: Address, dst: Address) -> Advert:
    """Read an advertisement received src -> dst (the IP header's addresses)."""
    if len(data) < HEADER.size:
        raise VrrpError("short", f"{len(data)} bytes, the header alone is 8")
    vt, vrid, prio, count, maxint, _ = HEADER.unpack_from(data)
    if vt >> 4 != VERSION:
        raise VrrpError("version", f"version {vt >> 4}, not 3")
    if vt & 0x0F != TYPE_ADVERT:
        raise VrrpError("type", f"type {vt & 0x0F}, not 1 (advertisement)")
    size = 4 if src.version == 4 else 16
    if len(data) < HEADER.size + count * size:
        raise VrrpError("length", f"{len(data)} bytes for {count} IPv{src.version} addresses")
    data = data[: HEADER.size + count * size]  # trailing bytes (padding) are not summed
    legacy = False
    if inet_checksum(_pseudo(src, dst, len(data)) + data) != 0:
        group = GROUP4 if src.version == 4 else GROUP6
        if dst == group or inet_checksum(_pseudo(src, group, len(data)) + data) != 0:
            raise VrrpError("checksum", "the checksum does not match (pseudo-header included)")
        legacy = True
    cls = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    addrs = tuple(
        cls(data[HEADER.size + i * size : HEADER.size + (i + 1) * size]) for i in range(count)
    )
    return Advert(vrid, prio, maxint & MAX_ADVER_CS, addrs, legacy)
