"""YAML scalars as the config reads them, and how values are shown in messages.

``scalar`` gives a node's kind and value the YAML 1.1 way (without constructing anything else),
``describe`` names a value in an error, ``fmt_duration`` prints seconds as 200ms/1s/10m/1h; the
name patterns (``NAME_RE``, ``NFT_TABLE_RE``, ``IFNAME_RE``) with their readable forms and the
duration syntax live here too. Pure functions of nodes; used by the ``Reader`` and the sections.
"""

from __future__ import annotations

import math
import re
from typing import Any

from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NFT_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")  # IFNAMSIZ 16, no '/' or spaces
PATTERN_TEXT = {
    NAME_RE.pattern: "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    NFT_TABLE_RE.pattern: "1-64 letters, digits, '_' or '-', starting with a letter or '_'",
    IFNAME_RE.pattern: "an interface name (1-15 characters, no '/' or space)",
}


TAG = "tag:yaml.org,2002:"
_CONSTRUCTOR = SafeConstructor()
DURATION_RE = re.compile(r"(-?)(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def fmt_duration(seconds: float) -> str:
    """200ms, 1s, 1.5s, 10m, 1h: how durations are shown in messages."""
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and float(seconds / size).is_integer():
            return f"{round(seconds / size)}{unit}"
    return f"{seconds:g}s"


def scalar(node: Node) -> tuple[str, Any]:
    """(kind, value) of a node: kind is null|boolean|integer|float|string|list|mapping."""
    if isinstance(node, MappingNode):
        return "mapping", None
    if not isinstance(node, ScalarNode):
        return "list", None
    tag = node.tag
    if tag == TAG + "null":
        return "null", None
    if tag == TAG + "bool":
        return "boolean", _CONSTRUCTOR.construct_yaml_bool(node)
    try:
        if tag == TAG + "int":
            return "integer", _CONSTRUCTOR.construct_yaml_int(node)
        if tag == TAG + "float":
            return "float", _CONSTRUCTOR.construct_yaml_float(node)
    except ValueError:  # more than 4300 digits: out of every range, whatever the field
        return ("integer" if tag == TAG + "int" else "float"), (
            -math.inf if str(node.value).lstrip().startswith("-") else math.inf
        )
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
