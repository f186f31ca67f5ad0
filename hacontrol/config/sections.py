"""The top of a config file and its small sections: ``node``, ``api``, ``dataplane``, ``logging``.

``parse_root`` walks the top-level mapping, hands ``defaults``/``services`` to
``hacontrol.config.services`` and ``ha`` to ``hacontrol.config.ha``, and builds the ``Config``
(with its digest) only when the whole file is clean.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, get_args

from yaml.nodes import Node, ScalarNode

from hacontrol.config.digest import compute_digest
from hacontrol.config.ha import parse_ha
from hacontrol.config.host import parse_host
from hacontrol.config.limits import DURATIONS
from hacontrol.config.nat import parse_nat
from hacontrol.config.reader import Reader
from hacontrol.config.scalars import NAME_RE, NFT_TABLE_RE
from hacontrol.config.secrets import read_token
from hacontrol.config.services import parse_defaults, parse_services
from hacontrol.model import (
    ApiConfig,
    Config,
    DataplaneConfig,
    DataplaneKind,
    LogFormat,
    LoggingConfig,
)

TOP_KEYS = ("node", "api", "dataplane", "logging", "defaults", "services", "ha", "host", "nat")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def parse_root(r: Reader, root: Node, check_files: bool) -> Config | None:
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
            lkw["format"] = r.choice(lg["format"], "logging.format", get_args(LogFormat))
        kw["logging"] = LoggingConfig(**lkw)
    defaults = parse_defaults(r, m["defaults"]) if "defaults" in m else {}
    if "services" in m:
        kw["services"] = parse_services(r, m["services"], defaults)
    if "ha" in m:
        kw["ha"] = parse_ha(r, m["ha"], check_files=check_files)
    if "host" in m:
        kw["host"] = parse_host(r, m["host"])
    if "nat" in m:
        plane_table = kw["dataplane"].nft_table if kw.get("dataplane") else "hacontrol"
        kw["nat"] = parse_nat(r, m["nat"], kw.get("ha"), plane_table)
    if not r.clean_since(start):
        return None
    kw["source"] = r.source
    kw["digest"] = compute_digest(kw.get("services", ()), kw.get("ha"))
    return Config(**kw)


def _parse_api(r: Reader, node: Node, check_files: bool) -> ApiConfig | None:
    m = r.mapping(node, "api", ("listen", "token_file", "group"))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "listen" in m:
        kw["listen"] = _listen(r, m["listen"], "api.listen")
    if "token_file" in m:
        kw["token_file"] = r.file_path(
            m["token_file"], "api.token_file", check=read_token if check_files else None,
            optional=True,
        )  # fmt: skip
    if "group" in m:
        kw["group"] = r.string(m["group"], "api.group", pattern=NAME_RE, optional=True)
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
    kinds: tuple[str, ...] = get_args(DataplaneKind)
    if isinstance(node, ScalarNode):
        kind = r.choice(node, "dataplane", kinds)
        return DataplaneConfig(kind=kind) if kind else None
    keys = ("kind", "resync_interval", "nft_table", "keep_on_stop", "state_dir", "drain_removed")
    m = r.mapping(node, "dataplane", keys)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "kind" in m:
        kw["kind"] = r.choice(m["kind"], "dataplane.kind", kinds)
    if "resync_interval" in m:
        kw["resync_interval"] = r.duration(
            m["resync_interval"], "dataplane.resync_interval",
            *DURATIONS["dataplane.resync_interval"],
        )  # fmt: skip
    if "nft_table" in m:
        kw["nft_table"] = r.string(m["nft_table"], "dataplane.nft_table", pattern=NFT_TABLE_RE)
    if "keep_on_stop" in m:
        kw["keep_on_stop"] = r.boolean(m["keep_on_stop"], "dataplane.keep_on_stop")
    if "state_dir" in m:
        kw["state_dir"] = r.abs_path(m["state_dir"], "dataplane.state_dir")
    if "drain_removed" in m:
        kw["drain_removed"] = r.duration(
            m["drain_removed"], "dataplane.drain_removed", *DURATIONS["dataplane.drain_removed"]
        )
    return DataplaneConfig(**kw)
