"""The ``defaults:`` and ``services:`` sections: virtual services, their checks and real servers.

Owns the check fields (``CHECK_KEYS``, which apply to which check type, per-field parsers), the
merge of a service's ``check:`` over ``defaults.check`` over the model defaults with the checks of
the combination (timeout < interval, exec needs a command), and the service-level rules (unique
names and protocol/vip/port, address families, ports under dr/tunnel, duplicate real servers).
A rule across fields is checked whenever the fields it reads are valid, whatever else is wrong in
the service, so one run of ``check`` reports every problem.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, get_args

from yaml.nodes import MappingNode, Node, ScalarNode

from hacontrol.config.limits import DURATIONS
from hacontrol.config.reader import Reader
from hacontrol.config.scalars import NAME_RE, fmt_duration, join, scalar
from hacontrol.model import (
    SCHEDULERS,
    CheckConfig,
    CheckType,
    Forwarding,
    OnFailure,
    Protocol,
    RealServer,
    ServiceConfig,
    host_port,
)

SERVICE_KEYS = (
    "name", "vip", "port", "protocol", "scheduler", "forwarding", "persistence", "on_failure",
    "sorry_server", "check", "real_servers",
)  # fmt: skip
REAL_SERVER_KEYS = ("address", "port", "weight")
CHECK_TYPES: tuple[str, ...] = get_args(CheckType)
CHECK_KEYS = tuple(f.name for f in fields(CheckConfig))
HTTP = ("http", "https")
# check fields that only mean something for some check types
CHECK_ONLY: dict[str, tuple[str, ...]] = {
    "path": HTTP, "method": HTTP, "host": HTTP, "expect_status": HTTP, "expect_body": HTTP,
    "expect_regex": HTTP, "verify_tls": ("https",), "command": ("exec",),
    "port": ("tcp", "http", "https", "exec"),
}  # fmt: skip
_DEFAULT_CHECK = CheckConfig()


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
    "interval": lambda r, n, p: r.duration(n, p, *DURATIONS["check.interval"]),
    "timeout": lambda r, n, p: r.duration(n, p, *DURATIONS["check.timeout"]),
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
    # a rule is checked when the fields it reads are valid (invalid ones are reported already)
    valid = {k: s.valid for k, s in merged.items()}
    interval = values.get("interval", _DEFAULT_CHECK.interval)
    timeout = values.get("timeout", _DEFAULT_CHECK.timeout)
    ts, its = merged.get("timeout"), merged.get("interval")
    involved_own = "timeout" in own or "interval" in own
    both_valid = valid.get("timeout", True) and valid.get("interval", True)
    if both_valid and timeout >= interval and (involved_own or not service_level):
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
    if (
        service_level
        and ctype == "exec"
        and valid.get("command", True)
        and not values.get("command")
    ):
        r.error(
            r.key_line(where) if where is not None else 0,
            join(path, "command"),
            "exec checks need a command: a list "
            "[program, args...]; {address} and {port} are substituted",
        )
    if not r.clean_since(start) or not all(valid.values()):
        return None
    return CheckConfig(**values)


def parse_defaults(r: Reader, node: Node) -> dict[str, Setting]:
    """The valid settings of ``defaults.check`` (invalid ones are reported and left out)."""
    d = r.mapping(node, "defaults", ("check",))
    if not d or "check" not in d:
        return {}
    settings = _check_settings(r, d["check"], "defaults.check") or {}
    _validate_check(r, {}, settings, None, "defaults.check", service_level=False)
    return {k: s for k, s in settings.items() if s.valid}


def parse_services(
    r: Reader, node: Node, defaults: dict[str, Setting]
) -> tuple[ServiceConfig, ...] | None:
    items = r.sequence(node, "services", optional=True)
    if items is None:
        return None
    out: list[ServiceConfig] = []
    names: dict[str, int] = {}
    keys: dict[tuple[str, str, int], int] = {}
    for i, item in enumerate(items):
        p = f"services[{i}]"
        svc, name, key = _parse_service(r, item, p, defaults)
        if name is not None and name in names:
            r.error(
                value_node(item, "name"),
                join(p, "name"),
                f"duplicate service name {name!r} (services[{names[name]}])",
            )
        if name is not None:
            names.setdefault(name, i)
        if key is not None and key in keys:
            proto, vip, port = key
            r.error(
                item,
                p,
                f"duplicate service {proto} {host_port(vip, port)} "
                f"(same protocol, vip and port as services[{keys[key]}])",
            )
        if key is not None:
            keys.setdefault(key, i)
        if svc is not None:
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
) -> tuple[ServiceConfig | None, str | None, tuple[str, str, int] | None]:
    """(the service or None, its name, its (protocol, vip, port)): the name and the key when
    valid even if the rest of the service is not, for the checks across services."""
    start = r.mark()
    m = r.mapping(node, p, SERVICE_KEYS, required=("name", "vip", "port"))
    if m is None:
        return None, None, None
    kw: dict[str, Any] = {}
    if "name" in m:
        before = r.mark()
        kw["name"] = r.string(m["name"], join(p, "name"), pattern=NAME_RE)
        if not r.clean_since(before):
            kw["name"] = None  # not compared with the other names either
    if "vip" in m:
        kw["vip"] = r.address(m["vip"], join(p, "vip"))
    if "port" in m:
        kw["port"] = r.integer(m["port"], join(p, "port"), 1, 65535)
    for key, choices in (
        ("protocol", get_args(Protocol)),
        ("scheduler", SCHEDULERS),
        ("forwarding", get_args(Forwarding)),
        ("on_failure", get_args(OnFailure)),
    ):
        if key in m:
            kw[key] = r.choice(m[key], join(p, key), choices)
    if "persistence" in m:
        kw["persistence"] = r.duration(
            m["persistence"], join(p, "persistence"), *DURATIONS["services[].persistence"]
        )
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
    proto = kw.get("protocol", "tcp")
    ident: tuple[str, str, int] | None = None
    if proto is not None and vip is not None and port is not None:
        ident = (str(proto), str(vip), int(port))
    if not r.clean_since(start):
        name: str | None = kw.get("name")
        return None, name, ident
    return ServiceConfig(**kw), str(kw["name"]), ident


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
        if (
            fwd in ("dr", "tunnel")
            and "port" in m
            and None not in (rs_port, port)
            and rs_port != port
        ):
            r.error(
                m["port"],
                join(rp, "port"),
                f"must equal the service port ({port}) with "
                f"forwarding {fwd}: only nat can translate ports, got {rs_port}",
            )
        if addr is None or rs_port is None:
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
        if r.clean_since(start) and weight is not None:
            out.append(RealServer(addr, rs_port, weight))
    return tuple(out)
