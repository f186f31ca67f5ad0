"""Values read from keepalived statements, checked, and written as hacontrol writes them.

``Ctx`` collects the errors of a conversion (``file:line: what``: a value the importer cannot
carry over faithfully, like an address that is none) — the conversion fails with all of them;
the things hacontrol has no equivalent for are not errors but notes, written as YAML comments
by the converters. Durations are seconds as keepalived reads them (``<TIMER>``: decimal, micro-
second resolution), written back as ``1s``, ``1.5s``, ``250ms``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hacontrol.migrate.keepalived_parse import Node
from hacontrol.migrate.keepalived_source import Issue

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass
class Ctx:
    """The errors of one conversion, and the host it is for."""

    host: str
    errors: list[Issue] = field(default_factory=list)

    def error(self, node: Node, what: str) -> None:
        self.errors.append(node.issue(f"{node.keyword}: {what}"))

    def arg(self, node: Node, i: int, what: str) -> str | None:
        """``node.args[i]``, or None after an error saying ``what`` is missing."""
        if len(node.args) > i:
            return node.args[i]
        self.error(node, f"{what} missing")
        return None

    def ip(self, node: Node, text: str | None) -> IPAddress | None:
        if text is None:
            return None
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            self.error(node, f"{text!r} is not an IP address")
            return None
        if addr.is_unspecified or addr.is_multicast or text == "255.255.255.255":
            self.error(node, f"{text} cannot be a server address (unspecified or multicast)")
            return None
        return addr

    def integer(self, node: Node, text: str | None, lo: int, hi: int, what: str) -> int | None:
        if text is None:
            return None
        what = "" if what == node.keyword else f"{what} "
        try:
            v = int(text, 10)
        except ValueError:
            self.error(node, f"{what}{text!r} is not a whole number")
            return None
        if not lo <= v <= hi:
            self.error(node, f"{what}{v} is out of keepalived's range {lo}..{hi}")
            return None
        return v

    def seconds(self, node: Node, text: str | None, what: str, lo: float = 0.0) -> float | None:
        """A keepalived ``<TIMER>``: decimal seconds, at most microsecond resolution."""
        if text is None:
            return None
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (v == v and lo <= v <= 365 * 86400) or not _decimal(text):
            what = "" if what == node.keyword else f"{what} "
            self.error(node, f"{what}{text!r} is not a number of seconds")
            return None
        return round(v, 6)


def _decimal(text: str) -> bool:
    head, _, tail = text.partition(".")
    return head.isdigit() and (tail == "" or tail.isdigit()) and len(text) < 20


def fmt_duration(seconds: float) -> str:
    """``60s``, ``1.5s``, ``250ms``, ``0s``: what hacontrol's config reads back to ``seconds``."""
    us = round(seconds * 1_000_000)
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0 and us < 1_000_000:
        return f"{us // 1000}ms"
    return f"{us / 1_000_000:.6f}".rstrip("0") + "s"


def endpoint(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def safe_name(text: str) -> str:
    """``text`` as a hacontrol name: 1-63 of letters, digits, ``.``, ``_``, ``-``, starting
    with a letter or digit."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in text)
    out = out.lstrip("._-")[:63].rstrip("-") or "x"
    return out


def unique(name: str, taken: set[str]) -> str:
    n, k = name, 2
    while n in taken:
        suffix = f"-{k}"
        n = name[: 63 - len(suffix)] + suffix
        k += 1
    taken.add(n)
    return n
