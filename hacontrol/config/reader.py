"""The ``Reader`` that walks a config file's YAML nodes, and the value parsers all sections share.

Owns issue recording (into ``hacontrol.config.issues.Issues``: every problem is recorded instead of
stopping), the walk's time budget (``WalkTimeout``), mapping walking (merge keys, duplicate and
unknown keys with hints, the line of a value's key) and the conversion of scalars: strings and
names, integers, booleans, fractions, choices, durations ("200ms", "1.5s", within a field's
range), IP addresses, address/prefix, endpoints, absolute paths, files checked by a rule (the
secrets) and argv lists. Imports only ``yaml`` nodes, ``hacontrol.model`` and its siblings
``issues``, ``limits`` and ``scalars``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import time
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hacontrol.config.issues import ConfigIssue, Issues
from hacontrol.config.limits import TIME_BUDGET
from hacontrol.config.scalars import (
    DURATION_RE,
    PATTERN_TEXT,
    TAG,
    UNITS,
    describe,
    fmt_duration,
    join,
    scalar,
)
from hacontrol.model import Endpoint


class WalkTimeout(Exception):
    """The walk of one file went past its time budget; ``line`` is where it was."""

    def __init__(self, line: int) -> None:
        super().__init__(f"time budget exceeded at line {line}")
        self.line = line


def _clip(text: str, most: int = 200) -> str:
    """At most ``most`` characters: a message quoting a 1 MB value stays one short line."""
    return text if len(text) <= most else f"{text[: most - 20]}... ({len(text):,} chars)"


class Reader:
    """Walks YAML nodes for one source, converting values and recording every issue found.

    Each reader method returns the converted value, or None after recording an issue (callers
    that must tell "null" from "invalid" compare ``mark()`` before and after)."""

    def __init__(
        self,
        source: str,
        *,
        clock: Callable[[], float] = time.thread_time,
        budget: float = TIME_BUDGET,
    ) -> None:
        self.source = source
        self.issues = Issues()  # every issue counted, the first MAX_ERRORS (by line) kept
        self._key_line: dict[int, int] = {}  # id(value node) -> line of its key
        self._clock = clock
        self.budget = budget
        self._deadline = clock() + budget

    def error(self, where: Node | tuple[int, int] | int, path: str, reason: str) -> None:
        """Record an issue at a node, a (line, column) or a line (1-based)."""
        if isinstance(where, Node):
            line, col = where.start_mark.line + 1, where.start_mark.column
        else:
            line, col = where if isinstance(where, tuple) else (where, 0)
        self.issues.add(
            ConfigIssue(self.source, line, _clip(path or "<root>"), _clip(reason, 400), col)
        )

    def key_line(self, node: Node) -> int:
        """The line of the key naming ``node`` ("check:"), or the node's own line."""
        return self._key_line.get(id(node), node.start_mark.line + 1)

    def mark(self) -> int:
        return self.issues.recorded

    def clean_since(self, mark: int) -> bool:
        return self.issues.recorded == mark

    def _tick(self, node: Node) -> None:
        if self._clock() > self._deadline:
            raise WalkTimeout(node.start_mark.line + 1)

    def _pairs(
        self, node: MappingNode, path: str, seen: tuple[int, ...] = ()
    ) -> dict[str, tuple[Node, Node]]:
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == TAG + "merge":  # YAML merge key "<<: *anchor"
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
                    self._tick(src)
                    if id(src) in (*seen, id(node)):
                        self.error(src, path, "'<<' merges a mapping into itself")
                    elif isinstance(src, MappingNode):
                        for k, kv in self._pairs(src, path, (*seen, id(node))).items():
                            merged.setdefault(k, kv)
                    else:
                        self.error(src, path, "'<<' needs a mapping or a list of mappings")
                continue
            if not isinstance(knode, ScalarNode):
                self.error(knode, path, f"keys must be plain names, got {describe(knode)}")
                continue
            key = str(knode.value)
            if key in explicit:
                first = explicit[key][0].start_mark.line + 1
                self.error(knode, join(path, key), f"duplicate key (first at line {first})")
                continue
            explicit[key] = (knode, vnode)
            self._key_line[id(vnode)] = knode.start_mark.line + 1
        return {**merged, **explicit}

    def mapping(
        self, node: Node, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> dict[str, Node] | None:
        self._tick(node)
        if not isinstance(node, MappingNode):
            self.error(node, path, f"must be a mapping, got {describe(node)}")
            return None
        out: dict[str, Node] = {}
        pairs = self._pairs(node, path)
        for key, (knode, vnode) in pairs.items():
            if key in allowed:
                out[key] = vnode
                continue
            if not path and key.startswith("x-"):
                continue  # top-level "x-..." keys are free: a place for YAML anchors
            hint = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            more = f"did you mean '{hint[0]}'?" if hint else "allowed: " + ", ".join(allowed)
            self.error(knode, join(path, key), f"unknown key ({more})")
        for key in required:  # reported on the line naming the mapping ("ha:"), if it has one
            if key not in pairs:
                where = (self.key_line(node), 0) if id(node) in self._key_line else node
                self.error(where, join(path, key), "missing (required)")
        return out

    def sequence(self, node: Node, path: str, *, optional: bool = False) -> list[Node] | None:
        """The items of a list; with ``optional``, null (an empty ``key:``) is an empty list."""
        self._tick(node)
        if optional and scalar(node)[0] == "null":
            return []
        if isinstance(node, SequenceNode):
            return list(node.value)
        self.error(node, path, f"must be a list, got {describe(node)}")
        return None

    def one_or_list(self, node: Node, path: str) -> list[tuple[Node, str]] | None:
        if isinstance(node, SequenceNode):
            return [(n, f"{path}[{i}]") for i, n in enumerate(node.value)]
        if isinstance(node, MappingNode):
            self.error(node, path, "must be a value or a list, got a mapping")
            return None
        return [(node, path)]

    def _typed(self, node: Node, path: str, kinds: tuple[str, ...], what: str) -> Any:
        kind, value = scalar(node)
        if kind not in kinds:
            self.error(node, path, f"must be {what}, got {describe(node)}")
            return None
        return value

    def string(
        self,
        node: Node,
        path: str,
        *,
        pattern: re.Pattern[str] | None = None,
        optional: bool = False,
    ) -> str | None:
        if optional and scalar(node)[0] == "null":
            return None
        text: str | None = self._typed(node, path, ("string",), "a string")
        if text is None:
            return None
        if text == "":
            self.error(node, path, "must not be empty")
        elif pattern is not None and not pattern.fullmatch(text):
            what = PATTERN_TEXT.get(pattern.pattern, f"match {pattern.pattern}")
            self.error(node, path, f"must be {what}, got {text!r}")
        return text

    def text(self, node: Node, path: str, what: str) -> str | None:
        """The literal text of a scalar (addresses: `2001:0:0:1` is not YAML 1.1's integer)."""
        if isinstance(node, ScalarNode) and scalar(node)[0] != "null" and node.value != "":
            return str(node.value)
        self.error(node, path, f"must be {what}, got {describe(node)}")
        return None

    def integer(
        self, node: Node, path: str, lo: int, hi: int, *, optional: bool = False
    ) -> int | None:
        if optional and scalar(node)[0] == "null":
            return None
        value: int | None = self._typed(node, path, ("integer",), "an integer")
        if value is not None and not lo <= value <= hi:
            self.error(node, path, f"must be {lo}..{hi}, got {node.value}")
            return None
        return value

    def boolean(self, node: Node, path: str) -> bool | None:
        value: bool | None = self._typed(node, path, ("boolean",), "true or false")
        return value

    def fraction(self, node: Node, path: str) -> float | None:
        value = self._typed(node, path, ("integer", "float"), "a number")
        if value is None:
            return None
        if not (math.isfinite(value) and 0 <= value < 1):
            self.error(node, path, f"must be >= 0 and < 1, got {node.value}")
            return None
        return float(value)

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> Any:
        text = self.text(node, path, "one of " + ", ".join(choices))
        if text is None or text in choices:
            return text
        folded = [c for c in choices if c.lower() == text.lower()]
        hint = folded or difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
        more = f" (did you mean '{hint[0]}'?)" if hint else ""
        self.error(node, path, f"must be one of {', '.join(choices)}, got {text!r}{more}")
        return None

    def duration(
        self, node: Node, path: str, lo: float, hi: float, off: bool = False
    ) -> float | None:
        """Seconds from "200ms", "1.5s", "2m", "1h" or a plain number of seconds, within
        ``lo..hi`` (``off``: 0 is accepted too, meaning switched off)."""
        kind, value = scalar(node)
        if kind in ("integer", "float"):
            seconds = float(value)
        elif kind == "string" and (mt := DURATION_RE.fullmatch(value.strip())):
            seconds = float(mt.group(2)) * UNITS[mt.group(3)] * (-1 if mt.group(1) else 1)
        else:
            self.error(
                node,
                path,
                "must be a duration like 200ms, 1s, 1.5s, 2m or a number "
                f"of seconds, got {describe(node)}",
            )
            return None
        if not (math.isfinite(seconds) and (lo <= seconds <= hi or (off and seconds == 0))):
            span = f"{fmt_duration(lo) if lo else '0'}..{fmt_duration(hi)}"
            self.error(
                node, path, f"must be {'0 (off) or ' if off else ''}{span}, got {node.value}"
            )
            return None
        return round(seconds, 9)

    def address(
        self, node: Node, path: str, *, unspecified: bool = False
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        text = self.text(node, path, "an IP address")
        if text is None:
            return None
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            self.error(node, path, f"invalid IP address {text!r}")
            return None
        bad = (
            "the unspecified address"
            if addr.is_unspecified and not unspecified
            else "a multicast address"
            if addr.is_multicast
            else "the broadcast address"
            if text == "255.255.255.255"
            else None
        )
        if bad:
            self.error(node, path, f"must not be {bad}, got {text}")
            return None
        return addr

    def interface(
        self, node: Node, path: str
    ) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        """An address with an optional prefix length ("192.0.2.10/24"; no prefix = host)."""
        text = self.text(node, path, "an address/prefix")
        if text is None:
            return None
        try:
            iface = ipaddress.ip_interface(text)
        except ValueError:
            self.error(node, path, f"invalid address/prefix {text!r}")
            return None
        if iface.ip.is_unspecified or iface.ip.is_multicast:
            self.error(node, path, f"must not be an unspecified or multicast address, got {text}")
            return None
        return iface

    def endpoint(
        self, node: Node, path: str, *, optional: bool = False, unspecified: bool = False
    ) -> Endpoint | None:
        """An Endpoint from "address:port" or "[v6]:port"."""
        if optional and scalar(node)[0] == "null":
            return None
        text = self.text(node, path, 'an "address:port"')
        if text is None:
            return None
        mt = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
        if mt is None:
            hint = f" (IPv6 needs brackets: '[{text.rsplit(':', 1)[0]}]:port')"
            self.error(
                node,
                path,
                f'must be "address:port" or "[v6]:port", got {text!r}'
                + (hint if text.count(":") > 1 and "[" not in text else ""),
            )
            return None
        host, port = (mt.group(1), mt.group(2)) if mt.group(1) else (mt.group(3), mt.group(4))
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            self.error(node, path, f"invalid IP address {host!r} in {text!r}")
            return None
        if (addr.version == 6) != bool(mt.group(1)):
            self.error(node, path, f"IPv6 addresses need brackets, IPv4 none; got {text!r}")
        elif not 1 <= int(port) <= 65535:
            self.error(node, path, f"port must be 1..65535, got {int(port)}")
        elif (addr.is_unspecified and not unspecified) or addr.is_multicast:
            self.error(node, path, f"must not be an unspecified or multicast address, got {text}")
        else:
            return Endpoint(addr, int(port))
        return None

    def abs_path(self, node: Node, path: str, *, optional: bool = False) -> str | None:
        text = self.string(node, path, optional=optional)
        if text is not None and not text.startswith("/"):
            self.error(node, path, f"must be an absolute path, got {text!r}")
        return text

    def file_path(
        self,
        node: Node,
        path: str,
        *,
        check: Callable[[str], object] | None,
        optional: bool = False,
    ) -> str | None:
        """An absolute path; with ``check`` (a rule of ``hacontrol.config.secrets``), also a
        file that passes it: its ``ValueError`` is recorded (the check is skipped when the path
        itself is invalid)."""
        start = self.mark()
        filename = self.abs_path(node, path, optional=optional)
        if check is not None and filename and self.clean_since(start):
            try:
                check(filename)
            except ValueError as exc:
                self.error(node, path, f"{filename}: {exc}")
        return filename

    def argv(self, node: Node, path: str) -> tuple[str, ...] | None:
        """A command as a list of strings; a single string is refused (never a shell)."""
        if isinstance(node, ScalarNode) and scalar(node)[0] == "string":
            self.error(
                node,
                path,
                "must be a list of strings [program, args...], not one "
                "string: commands never run through a shell",
            )
            return None
        items = self.sequence(node, path)
        if items is None:
            return None
        if not items:
            self.error(node, path, "must not be empty")
        out: list[str] = []
        for i, item in enumerate(items):  # numbers are taken as written: [dig, -p, 53]
            if scalar(item)[0] in ("integer", "float"):
                out.append(str(item.value))
            elif (arg := self.string(item, f"{path}[{i}]")) is not None:
                out.append(arg)
        return tuple(out)
