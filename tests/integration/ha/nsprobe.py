"""Looking into and poking at network namespaces from the test process, for the HA pair tests.

``Ns.call`` (hacontrol.lab.netns) runs the helpers below on a thread inside a namespace:
reading a neighbour entry, sending a datagram, capturing a frame or recording a stream of them,
making a socket there.
``addresses`` reads a namespace's addresses and lifetimes (``ip -j addr``); ``nft_filter`` /
``nft_clear`` install and remove the test's own nftables table ``hctest`` (never the daemon's);
``wait_for`` polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from hacontrol.lab.netns import Ns

T = TypeVar("T")

ETH_P_ALL = 0x0003
FOREVER = 0xFFFFFFFF  # the kernel's infinite address lifetime


def wait_for(cond: Callable[[], T | None], timeout: float, what: str,
             explain: Callable[[], str] = lambda: "") -> T:  # fmt: skip
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{explain()}")
        time.sleep(0.05)


def addresses(ns: Ns, wanted: Iterable[str]) -> dict[str, int | None]:
    """Which of the ``wanted`` CIDRs ``ns`` has -> valid lifetime left (None: forever)."""
    wanted = set(wanted)
    out: dict[str, int | None] = {}
    r = ns.ip("-j", "addr", "show", check=False)
    with contextlib.suppress(ValueError):
        for link in json.loads(r.stdout or "[]"):
            for a in link.get("addr_info", []):
                cidr = f"{a.get('local')}/{a.get('prefixlen')}"
                if cidr in wanted:
                    left = a.get("valid_life_time")
                    out[cidr] = None if left in (None, FOREVER) else int(left)
    return out


def mac_of(ns: Ns, ifname: str) -> str:
    r = ns.ip("-j", "link", "show", "dev", ifname)
    return str(json.loads(r.stdout)[0]["address"])


def neighbour(ns: Ns, address: str) -> str | None:
    """The MAC ``ns``'s neighbour entry for ``address`` holds (pyroute2, inside ``ns``)."""
    from pyroute2 import IPRoute

    def read() -> str | None:
        with IPRoute() as ipr:
            for n in ipr.get_neighbours(dst=address):
                mac = n.get_attr("NDA_LLADDR")
                if mac:
                    return str(mac)
        return None

    return ns.call(read)


def send_udp(ns: Ns, address: str, port: int, payloads: Iterable[bytes]) -> None:
    """Datagrams from ``ns`` to ``address:port`` (an unbound socket: any source port)."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for p in payloads:
                s.sendto(p, (address, port))

    ns.call(send)


def capture_udp(ns: Ns, ifname: str, dst: str, dport: int, timeout: float = 10.0) -> bytes:
    """The payload of the next IPv4 UDP datagram ``ns`` sends (or gets) to ``dst:dport`` on
    ``ifname`` (AF_PACKET, ETH_P_ALL: only such taps see outgoing frames)."""

    def cap() -> bytes:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
            s.bind((ifname, ETH_P_ALL))  # (Python applies htons to the protocol here)
            s.settimeout(1.0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    frame = s.recv(65535)
                except TimeoutError:
                    continue
                if frame[12:14] != b"\x08\x00":  # IPv4
                    continue
                ip = frame[14:]
                if ip[9] != socket.IPPROTO_UDP or socket.inet_ntoa(ip[16:20]) != dst:
                    continue
                udp = ip[(ip[0] & 0x0F) * 4 :]
                if int.from_bytes(udp[2:4], "big") == dport:
                    return bytes(udp[8 : int.from_bytes(udp[4:6], "big")])
        raise AssertionError(f"no UDP to {dst}:{dport} seen on {ns.name} {ifname}")

    return ns.call(cap)


def record_udp(ns: Ns, sources: Iterable[str], dport: int, seconds: float,
               limit: int = 1000) -> list[tuple[bytes, str]]:  # fmt: skip
    """Every IPv4 UDP datagram from one of ``sources`` to port ``dport`` that ``ns`` receives on
    any interface within ``seconds`` (at most ``limit``): (payload, destination address). An
    AF_PACKET tap, as an attacker on the segment would record them."""
    src = {socket.inet_aton(a) for a in sources}

    def rec() -> list[tuple[bytes, str]]:
        out: list[tuple[bytes, str]] = []
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
            s.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and len(out) < limit:
                try:
                    frame, where = s.recvfrom(65535)
                except TimeoutError:
                    continue
                if where[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                    continue
                ip = frame[14:]
                if ip[9] != socket.IPPROTO_UDP or bytes(ip[12:16]) not in src:
                    continue
                udp = ip[(ip[0] & 0x0F) * 4 :]
                if int.from_bytes(udp[2:4], "big") == dport:
                    payload = bytes(udp[8 : int.from_bytes(udp[4:6], "big")])
                    out.append((payload, socket.inet_ntoa(ip[16:20])))
        return out

    return ns.call(rec)


def udp_socket(ns: Ns, bind: tuple[str, int] | None = None) -> socket.socket:
    """A UDP socket made inside ``ns`` (optionally bound), usable from any thread."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if bind is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(bind)
        return s

    return ns.call(make)


def _nft(ns: Ns, rules: str) -> None:
    r = subprocess.run(ns.argv("nft", "-f", "-"), input=rules, capture_output=True, text=True,
                       timeout=30)  # fmt: skip
    assert r.returncode == 0, r.stderr


def nft_filter(ns: Ns, rules: Iterable[str]) -> None:
    """Replace ``ns``'s ``inet hctest`` table: each rule in its input and its output hook."""
    body = "\n".join(f"    {m}" for m in rules)
    chains = "\n".join(
        f"  chain {c} {{ type filter hook {h} priority -10; policy accept;\n{body}\n  }}"
        for c, h in (("in", "input"), ("out", "output"))
    )
    _nft(ns, f"table inet hctest {{}}\ndelete table inet hctest\n"
             f"table inet hctest {{\n{chains}\n}}\n")  # fmt: skip


def nft_clear(ns: Ns) -> None:
    _nft(ns, "table inet hctest {}\ndelete table inet hctest\n")
