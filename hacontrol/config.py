"""Configuration loader: YAML text -> a validated ``hacontrol.model.Config``, or all its errors.

Owns the config file format. ``load``/``loads`` parse YAML into nodes (keeping line numbers), walk
them with a ``Reader`` that records a ``ConfigIssue`` (``FILE:LINE: FIELD.PATH: reason``) for each
problem instead of stopping, and raise one ``ConfigError`` listing all of them. The only I/O besides
reading the file is the optional existence check of ``ha.secret_file`` / ``api.token_file``
(``check_files``). The ``ha:`` section is parsed by ``hacontrol.config_ha``; the services, checks
and the small top-level sections are here.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, fields, is_dataclass
from dataclasses import field as dc_field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hacontrol.model import (
    SCHEDULERS,
    ApiConfig,
    CheckConfig,
    Config,
    DataplaneConfig,
    Endpoint,
    HAConfig,
    LoggingConfig,
    RealServer,
    ServiceConfig,
)

__all__ = ["ConfigError", "ConfigIssue", "compute_digest", "format_errors", "load", "loads"]

TOP_KEYS = ("node", "api", "dataplane", "logging", "defaults", "services", "ha")
SERVICE_KEYS = (
    "name", "vip", "port", "protocol", "scheduler", "forwarding", "persistence", "on_failure",
    "sorry_server", "check", "real_servers",
)  # fmt: skip
REAL_SERVER_KEYS = ("address", "port", "weight")
CHECK_TYPES = ("tcp", "http", "https", "exec", "none")
CHECK_KEYS = tuple(f.name for f in fields(CheckConfig))
HTTP = ("http", "https")
# check fields that only mean something for some check types
CHECK_ONLY: dict[str, tuple[str, ...]] = {
    "path": HTTP, "method": HTTP, "host": HTTP, "expect_status": HTTP, "expect_body": HTTP,
    "expect_regex": HTTP, "verify_tls": ("https",), "command": ("exec",),
    "port": ("tcp", "http", "https", "exec"),
}  # fmt: skip
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NFT_TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,14}")  # IFNAMSIZ 16, no '/' or spaces
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_DEFAULT_CHECK = CheckConfig()
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


class ConfigError(Exception):
    """The config is invalid; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


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

    def check_file(self, node: Node, path: str, filename: str) -> None:
        if not os.path.isfile(filename):
            self.error(node, path, f"file not found: {filename}")
        elif not os.access(filename, os.R_OK):
            self.error(node, path, f"file not readable: {filename}")

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


def load(path: str, *, check_files: bool = True) -> Config:
    """Read and validate the config file at ``path``; raise ConfigError listing every problem.

    ``check_files=False`` skips the existence checks of ``ha.secret_file`` and ``api.token_file``
    (unit tests, linting a config on another machine)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([ConfigIssue(path, 0, "<file>", f"cannot read: {why}")]) from None
    return loads(text, source=path, check_files=check_files)


def loads(text: str, source: str = "<string>", *, check_files: bool = True) -> Config:
    """Validate config ``text``; ``source`` names it in errors and becomes ``Config.source``."""
    r = Reader(source)
    root = _compose(r, text)
    config = _parse_root(r, root, check_files) if root is not None else None
    if r.issues or config is None:
        raise ConfigError(r.sorted_issues())
    return config


def format_errors(err: ConfigError) -> str:
    """Human text for the CLI: one ``FILE:LINE: FIELD: reason`` line per issue plus a count."""
    n = len(err.errors)
    source = err.errors[0].file if err.errors else "config"
    return f"{err}\n{source}: {n} error{'s' if n != 1 else ''}"


def compute_digest(services: tuple[ServiceConfig, ...], ha: HAConfig | None) -> str:
    """sha256 of what two HA peers must agree on: the services and the VIP addresses.

    Order-insensitive (services by name, real servers by address/port, VIPs by address) and
    blind to node-specific fields (node name, api, bind, peers, priority, VIP interface names)."""
    svcs = [_plain(s) for s in services]
    for s in svcs:
        s["real_servers"].sort(key=lambda rs: (":" in rs["address"], rs["address"], rs["port"]))
    svcs.sort(key=lambda s: s["name"])
    vips = sorted(str(v.address) for v in ha.vips) if ha else []
    doc = {"format": 1, "services": svcs, "vips": vips}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _plain(o: Any) -> Any:
    if is_dataclass(o) and not isinstance(o, type):
        return {f.name: _plain(getattr(o, f.name)) for f in fields(o)}
    if isinstance(o, tuple | list):
        return [_plain(x) for x in o]
    if isinstance(o, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(o)
    if isinstance(o, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        return str(o)
    return o


def _compose(r: Reader, text: str) -> Node | None:
    fast = getattr(yaml, "CSafeLoader", None)  # libyaml: ~6x faster on big files
    if fast is not None:
        cloader = fast(text)
        try:
            return _nonempty(r, cloader.get_single_node())
        except yaml.YAMLError:
            pass  # compose again in Python: its messages are the documented ones
        finally:
            cloader.dispose()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = e.problem or e.context or "invalid YAML"
        if e.problem and e.context and e.problem.startswith("but "):
            reason = f"{e.context}, {e.problem}"
        elif e.problem and e.context and e.context_mark is not None:
            reason += f" ({e.context} started at line {e.context_mark.line + 1})"
        r.error(line, "<syntax>", reason)
        return None
    except yaml.YAMLError as e:  # reader errors (bad characters) carry a position, not a mark
        pos = getattr(e, "position", 0)
        r.error(text[:pos].count("\n") + 1, "<syntax>", str(e).splitlines()[0])
        return None
    finally:
        loader.dispose()
    return _nonempty(r, node)


def _nonempty(r: Reader, node: Node | None) -> Node | None:
    if node is None:
        r.error(1, "<root>", "the config is empty; expected a mapping with at least 'node'")
    return node


def _parse_root(r: Reader, root: Node, check_files: bool) -> Config | None:
    from hacontrol import config_ha  # the ha section imports this module's Reader helpers

    start = r.mark()
    m = r.mapping(root, "", TOP_KEYS, required=("node",))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    node = r.mapping(m["node"], "node", ("name",), ("name",)) if "node" in m else None
    if node and "name" in node:
        kw["node_name"] = r.string(node["name"], "node.name", pattern=NAME_RE)
    if "api" in m:
        kw["api"] = _parse_api(r, m["api"], check_files)
    if "dataplane" in m:
        kw["dataplane"] = _parse_dataplane(r, m["dataplane"])
    if "logging" in m and (lg := r.mapping(m["logging"], "logging", ("level", "format"))):
        lkw: dict[str, Any] = {}
        if "level" in lg:
            lkw["level"] = r.choice(lg["level"], "logging.level", LOG_LEVELS)
        if "format" in lg:
            lkw["format"] = r.choice(lg["format"], "logging.format", ("auto", "json", "console"))
        kw["logging"] = LoggingConfig(**lkw)
    defaults: dict[str, Setting] = {}
    d = r.mapping(m["defaults"], "defaults", ("check",)) if "defaults" in m else None
    if d and "check" in d:
        settings = _check_settings(r, d["check"], "defaults.check") or {}
        _validate_check(r, {}, settings, None, "defaults.check", service_level=False)
        defaults = {k: s for k, s in settings.items() if s.valid}
    if "services" in m:
        kw["services"] = _parse_services(r, m["services"], defaults)
    if "ha" in m:
        kw["ha"] = config_ha.parse_ha(r, m["ha"], check_files=check_files)
    if not r.clean_since(start):
        return None
    kw["source"] = r.source
    kw["digest"] = compute_digest(kw.get("services", ()), kw.get("ha"))
    return Config(**kw)


def _parse_api(r: Reader, node: Node, check_files: bool) -> ApiConfig | None:
    m = r.mapping(node, "api", ("listen", "token_file"))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "listen" in m:
        kw["listen"] = _listen(r, m["listen"], "api.listen")
    if "token_file" in m:
        path_ok = r.mark()
        kw["token_file"] = r.abs_path(m["token_file"], "api.token_file", optional=True)
        if check_files and kw["token_file"] and r.clean_since(path_ok):
            r.check_file(m["token_file"], "api.token_file", kw["token_file"])
    return ApiConfig(**kw)


def _listen(r: Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is None:
        return None
    if text.startswith("unix:"):
        if not text[5:].startswith("/"):
            r.error(node, path, f"unix socket path must be absolute, got {text!r}")
        return text
    mt = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    ok = mt is not None and 1 <= int(mt.group(2) or mt.group(4)) <= 65535
    if mt and mt.group(1):
        ok = ok and _is_ip(mt.group(1), 6)
    elif mt:
        host = mt.group(3)
        ok = ok and (_is_ip(host, 4) or (HOSTNAME_RE.fullmatch(host) is not None))
    if not ok:
        r.error(node, path, f'must be "host:port", "[v6]:port" or "unix:/path", got {text!r}')
    return text


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _parse_dataplane(r: Reader, node: Node) -> DataplaneConfig | None:
    kinds = ("auto", "ipvs", "nftables", "memory")
    if isinstance(node, ScalarNode):
        kind = r.choice(node, "dataplane", kinds)
        return DataplaneConfig(kind=kind) if kind else None
    keys = ("kind", "resync_interval", "nft_table", "keep_on_stop", "state_dir")
    m = r.mapping(node, "dataplane", keys)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "kind" in m:
        kw["kind"] = r.choice(m["kind"], "dataplane.kind", kinds)
    if "resync_interval" in m:
        kw["resync_interval"] = r.duration(m["resync_interval"], "dataplane.resync_interval")
    if "nft_table" in m:
        kw["nft_table"] = r.string(m["nft_table"], "dataplane.nft_table", pattern=NFT_TABLE_RE)
    if "keep_on_stop" in m:
        kw["keep_on_stop"] = r.boolean(m["keep_on_stop"], "dataplane.keep_on_stop")
    if "state_dir" in m:
        kw["state_dir"] = r.abs_path(m["state_dir"], "dataplane.state_dir")
    return DataplaneConfig(**kw)


@dataclass(frozen=True)
class Setting:
    """A check field as set in the file: its value and where (so errors point at the source)."""

    value: Any
    at: tuple[int, int]  # (line, column) where it is set
    path: str
    valid: bool = True  # False: set but invalid (already reported); skips dependent checks


def _check_settings(r: Reader, node: Node, path: str) -> dict[str, Setting] | None:
    m = r.mapping(node, path, CHECK_KEYS)
    if m is None:
        return None
    out: dict[str, Setting] = {}
    for key, vn in m.items():
        p = join(path, key)
        start = r.mark()
        value = _CHECK_PARSERS[key](r, vn, p)
        at = (vn.start_mark.line + 1, vn.start_mark.column)
        out[key] = Setting(value, at, p, valid=r.clean_since(start))
    return out


def _status_codes(r: Reader, node: Node, path: str) -> tuple[int, ...] | None:
    items = r.one_or_list(node, path)
    if items is None:
        return None
    codes = [r.integer(n, p, 100, 599) for n, p in items]
    if not items:
        r.error(node, path, "must list at least one status code")
    return tuple(sorted({c for c in codes if c is not None}))


def _regex(r: Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path, optional=True)
    if text is not None:
        try:
            re.compile(text)
        except re.error as e:
            r.error(node, path, f"invalid regular expression: {e}")
    return text


def _http_path(r: Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path)
    if text is not None and (not text.startswith("/") or re.search(r"\s", text)):
        r.error(node, path, f"must start with '/' and contain no spaces, got {text!r}")
    return text


def _host(r: Reader, node: Node, path: str) -> str | None:
    text = r.string(node, path, optional=True)
    if text is not None and re.search(r"\s", text):
        r.error(node, path, f"must not contain spaces, got {text!r}")
    return text


_CHECK_PARSERS: dict[str, Any] = {
    "type": lambda r, n, p: r.choice(n, p, CHECK_TYPES),
    "interval": lambda r, n, p: r.duration(n, p),
    "timeout": lambda r, n, p: r.duration(n, p),
    "rise": lambda r, n, p: r.integer(n, p, 1, 1000),
    "fall": lambda r, n, p: r.integer(n, p, 1, 1000),
    "jitter": lambda r, n, p: r.fraction(n, p),
    "port": lambda r, n, p: r.integer(n, p, 1, 65535, optional=True),
    "path": _http_path,
    "method": lambda r, n, p: r.choice(n, p, ("GET", "HEAD")),
    "host": _host,
    "expect_status": _status_codes,
    "expect_body": lambda r, n, p: r.string(n, p, optional=True),
    "expect_regex": _regex,
    "verify_tls": lambda r, n, p: r.boolean(n, p),
    "command": lambda r, n, p: r.argv(n, p),
}


def _validate_check(
    r: Reader,
    defaults: dict[str, Setting],
    own: dict[str, Setting],
    where: Node | None,
    path: str,
    *,
    service_level: bool,
) -> CheckConfig | None:
    """Merge ``own`` over ``defaults`` over the model defaults and check the combination."""
    start = r.mark()
    merged = {**defaults, **own}
    ctype = merged["type"].value if "type" in merged else _DEFAULT_CHECK.type
    values: dict[str, Any] = {}
    for key, s in merged.items():
        only = CHECK_ONLY.get(key)
        if only is None or ctype in only or ctype is None:
            values[key] = s.value
        elif service_level and key in own:
            r.error(s.at, s.path, f"only applies to {'/'.join(only)} checks, not {ctype}")
    if not all(s.valid for s in merged.values()):
        return None  # the field errors are reported; combinations of invalid values are noise
    interval = values.get("interval", _DEFAULT_CHECK.interval)
    timeout = values.get("timeout", _DEFAULT_CHECK.timeout)
    ts, its = merged.get("timeout"), merged.get("interval")
    involved_own = "timeout" in own or "interval" in own
    if timeout >= interval and (involved_own or not service_level):
        if ts is not None and ("timeout" in own or "interval" not in own):
            r.error(
                ts.at,
                ts.path,
                f"must be less than interval ({fmt_duration(interval)}), "
                f"got {fmt_duration(timeout)}",
            )
        elif its is not None:
            r.error(
                its.at,
                its.path,
                f"must be greater than timeout "
                f"({fmt_duration(timeout)}), got {fmt_duration(interval)}",
            )
    if service_level and ctype == "exec" and not values.get("command"):
        r.error(
            r.key_line(where) if where is not None else 0,
            join(path, "command"),
            "exec checks need a command: a list "
            "[program, args...]; {address} and {port} are substituted",
        )
    if not r.clean_since(start):
        return None
    return CheckConfig(**values)


def _parse_services(
    r: Reader, node: Node, defaults: dict[str, Setting]
) -> tuple[ServiceConfig, ...] | None:
    items = r.sequence(node, "services", optional=True)
    if items is None:
        return None
    out: list[ServiceConfig] = []
    names: dict[str, int] = {}
    keys: dict[tuple[str, str, int], int] = {}
    for i, item in enumerate(items):
        svc = _parse_service(r, item, f"services[{i}]", defaults)
        if svc is None:
            continue
        p = f"services[{i}]"
        if svc.name in names:
            r.error(
                value_node(item, "name"),
                join(p, "name"),
                f"duplicate service name {svc.name!r} (services[{names[svc.name]}])",
            )
        names.setdefault(svc.name, i)
        key = (svc.protocol, str(svc.vip), svc.port)
        if key in keys:
            r.error(
                item,
                p,
                f"duplicate service {svc.protocol} {svc.vip_endpoint} "
                f"(same protocol, vip and port as services[{keys[key]}])",
            )
        keys.setdefault(key, i)
        out.append(svc)
    return tuple(out)


def value_node(node: Node, key: str) -> Node:
    """The value node of ``key`` in a mapping node (for pointing errors at it), else ``node``."""
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == key:
                return v  # type: ignore[no-any-return]
    return node


def _parse_service(
    r: Reader, node: Node, p: str, defaults: dict[str, Setting]
) -> ServiceConfig | None:
    start = r.mark()
    m = r.mapping(node, p, SERVICE_KEYS, required=("name", "vip", "port"))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "name" in m:
        kw["name"] = r.string(m["name"], join(p, "name"), pattern=NAME_RE)
    if "vip" in m:
        kw["vip"] = r.address(m["vip"], join(p, "vip"))
    if "port" in m:
        kw["port"] = r.integer(m["port"], join(p, "port"), 1, 65535)
    for key, choices in (
        ("protocol", ("tcp", "udp")),
        ("scheduler", SCHEDULERS),
        ("forwarding", ("nat", "dr", "tunnel")),
        ("on_failure", ("remove", "weight0")),
    ):
        if key in m:
            kw[key] = r.choice(m[key], join(p, key), choices)
    if "persistence" in m:
        kw["persistence"] = r.duration(m["persistence"], join(p, "persistence"), zero=True)
        if kw["persistence"] is not None and kw["persistence"] != int(kw["persistence"]):
            r.error(
                m["persistence"],
                join(p, "persistence"),
                f"must be whole seconds, got {fmt_duration(kw['persistence'])}",
            )
    if "sorry_server" in m:
        kw["sorry_server"] = r.endpoint(m["sorry_server"], join(p, "sorry_server"), optional=True)
    check_node = m.get("check")
    if check_node is not None and scalar(check_node)[0] == "null":
        check_node = None  # "check:" with nothing under it: the defaults
    own = _check_settings(r, check_node, join(p, "check")) if check_node is not None else {}
    if own is not None:
        kw["check"] = _validate_check(
            r, defaults, own, check_node or node, join(p, "check"), service_level=True
        )
    vip, port = kw.get("vip"), kw.get("port")
    fwd = kw.get("forwarding", "nat")
    kw["real_servers"] = _parse_real_servers(r, m.get("real_servers"), p, vip, port, fwd)
    sorry = kw.get("sorry_server")
    if vip is not None and sorry is not None and sorry.address.version != vip.version:
        r.error(
            m["sorry_server"],
            join(p, "sorry_server"),
            f"IPv{sorry.address.version} sorry server for an IPv{vip.version} vip {vip}",
        )
    if not r.clean_since(start):
        return None
    return ServiceConfig(**kw)


def _parse_real_servers(
    r: Reader, node: Node | None, p: str, vip: Any, port: int | None, fwd: str
) -> tuple[RealServer, ...]:
    if node is None:
        return ()
    items = r.sequence(node, join(p, "real_servers"), optional=True)
    out: list[RealServer] = []
    seen: dict[tuple[str, int], int] = {}
    for j, item in enumerate(items or []):
        rp = f"{p}.real_servers[{j}]"
        m = r.mapping(item, rp, REAL_SERVER_KEYS, required=("address",))
        if m is None:
            continue
        start = r.mark()
        addr = r.address(m["address"], join(rp, "address")) if "address" in m else None
        rs_port = r.integer(m["port"], join(rp, "port"), 1, 65535) if "port" in m else port
        weight = r.integer(m["weight"], join(rp, "weight"), 0, 65535) if "weight" in m else 1
        if addr is not None and vip is not None:
            if addr.version != vip.version:
                r.error(
                    m["address"],
                    join(rp, "address"),
                    f"IPv{addr.version} real server {addr} for an IPv{vip.version} vip {vip}",
                )
            elif addr == vip:
                r.error(m["address"], join(rp, "address"), f"is the service vip {vip}")
        if fwd in ("dr", "tunnel") and "port" in m and rs_port is not None and rs_port != port:
            r.error(
                m["port"],
                join(rp, "port"),
                f"must equal the service port ({port}) with "
                f"forwarding {fwd}: only nat can translate ports, got {rs_port}",
            )
        if not r.clean_since(start) or addr is None or rs_port is None or weight is None:
            continue
        key = (str(addr), rs_port)
        if key in seen:
            r.error(
                item,
                rp,
                f"duplicate real server {RealServer(addr, rs_port).endpoint} "
                f"(also {p}.real_servers[{seen[key]}])",
            )
            continue
        seen[key] = j
        out.append(RealServer(addr, rs_port, weight))
    return tuple(out)
