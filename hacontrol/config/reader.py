"""The ``Reader`` that walks a config file's YAML nodes, and the value parsers all sections share.

Owns issue recording (``ConfigIssue``: ``FILE:LINE: FIELD.PATH: reason``; every problem is recorded
instead of stopping), mapping walking (merge keys, duplicate and unknown keys with hints, the line
of a value's key) and the conversion of scalars: strings and names, integers, booleans, fractions,
choices, durations ("200ms", "1.5s"), IP addresses, address/prefix, endpoints, absolute paths,
file existence and argv lists. Imports only ``yaml`` nodes and ``hacontrol.model``.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hacontrol.model import Endpoint

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NFT_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")  # IFNAMSIZ 16, no '/' or spaces
PATTERN_TEXT = {
    NAME_RE.pattern: "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    NFT_TABLE_RE.pattern: "1-64 letters, digits, '_' or '-', starting with a letter or '_'",
    IFNAME_RE.pattern: "an interface name (1-15 characters, no '/' or space)",
}


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file; ``str()`` is ``FILE:LINE: FIELD.PATH: reason``."""

    file: str
    line: int  # 1-based; 0 when the problem is the file itself (unreadable)
    field: str  # dotted path like services[0].real_servers[1].port, or <syntax>/<root>/<file>
    reason: str
    column: int = dc_field(default=0, compare=False, repr=False)  # only orders issues on one line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.field}: {self.reason}"


_TAG = "tag:yaml.org,2002:"
_CONSTRUCTOR = SafeConstructor()
_DURATION_RE = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def fmt_duration(seconds: float) -> str:
    """200ms, 1s, 1.5s: how durations are shown in messages."""
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def scalar(node: Node) -> tuple[str, Any]:
    """(kind, value) of a node: kind is null|boolean|integer|float|string|list|mapping."""
    if isinstance(node, MappingNode):
        return "mapping", None
    if not isinstance(node, ScalarNode):
        return "list", None
    tag = node.tag
    if tag == _TAG + "null":
        return "null", None
    if tag == _TAG + "bool":
        return "boolean", _CONSTRUCTOR.construct_yaml_bool(node)
    if tag == _TAG + "int":
        return "integer", _CONSTRUCTOR.construct_yaml_int(node)
    if tag == _TAG + "float":
        return "float", _CONSTRUCTOR.construct_yaml_float(node)
    return "string", str(node.value)


def describe(node: Node) -> str:
    kind, value = scalar(node)
    if kind in ("mapping", "list"):
        return f"a {kind}"
    if kind == "null":
        return "null"
    if kind == "string":
        return f"string {value!r}"
    return f"{kind} {node.value}"


class Reader:
    """Walks YAML nodes for one source, converting values and recording every issue found.

    Each reader method returns the converted value, or None after recording an issue (callers
    that must tell "null" from "invalid" compare ``mark()`` before and after)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self._key_line: dict[int, int] = {}  # id(value node) -> line of its key

    def error(self, where: Node | tuple[int, int] | int, path: str, reason: str) -> None:
        """Record an issue at a node, a (line, column) or a line (1-based)."""
        if isinstance(where, Node):
            line, col = where.start_mark.line + 1, where.start_mark.column
        else:
            line, col = where if isinstance(where, tuple) else (where, 0)
        self.issues.append(ConfigIssue(self.source, line, path or "<root>", reason, col))

    def key_line(self, node: Node) -> int:
        """The line of the key naming ``node`` ("check:"), or the node's own line."""
        return self._key_line.get(id(node), node.start_mark.line + 1)

    def mark(self) -> int:
        return len(self.issues)

    def clean_since(self, mark: int) -> bool:
        return len(self.issues) == mark

    def sorted_issues(self) -> list[ConfigIssue]:
        return sorted(self.issues, key=lambda i: (i.line, i.column))

    def _pairs(
        self, node: MappingNode, path: str, seen: tuple[int, ...] = ()
    ) -> dict[str, tuple[Node, Node]]:
        explicit: dict[str, tuple[Node, Node]] = {}
        merged: dict[str, tuple[Node, Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == _TAG + "merge":  # YAML merge key "<<: *anchor"
                sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
                for src in sources:
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
            self.error(node, path, f"must be {lo}..{hi}, got {value}")
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

    def duration(self, node: Node, path: str, *, zero: bool = False) -> float | None:
        """Seconds from "200ms", "1.5s", "2m", "1h" or a plain number of seconds."""
        kind, value = scalar(node)
        if kind in ("integer", "float"):
            seconds = float(value)
        elif kind == "string" and (mt := _DURATION_RE.fullmatch(value.strip())):
            seconds = float(mt.group(2)) * _UNITS[mt.group(3)] * (-1 if mt.group(1) else 1)
        else:
            self.error(
                node,
                path,
                "must be a duration like 200ms, 1s, 1.5s, 2m or a number "
                f"of seconds, got {describe(node)}",
            )
            return None
        if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
            self.error(node, path, f"must be {'>= 0' if zero else '> 0'}, got {node.value}")
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
        self, node: Node, path: str, *, check: bool, optional: bool = False
    ) -> str | None:
        """An absolute path; with ``check``, also an existing readable file (the HA secret, the
        API token; the check is skipped when the path itself is invalid)."""
        start = self.mark()
        filename = self.abs_path(node, path, optional=optional)
        if check and filename and self.clean_since(start):
            if not os.path.isfile(filename):
                self.error(node, path, f"file not found: {filename}")
            elif not os.access(filename, os.R_OK):
                self.error(node, path, f"file not readable: {filename}")
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
