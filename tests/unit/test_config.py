"""Config loader tests: a corpus of bad configs with the exact error lines, and valid configs.

Addresses are documentation ranges only (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32); the examples in configs/ are loaded, never contacted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import textwrap
from pathlib import Path

import pytest

from hacontrol import config
from hacontrol.config import ConfigError, ConfigIssue, format_errors, load, loads
from hacontrol.model import CheckConfig, Config, Endpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# A minimal valid service block used as a prefix by many cases: lines 1-7.
BASE = """\
node: {name: d1}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    real_servers:
      - {address: 198.51.100.2, port: 80}
"""


def _errors(text: str, **kw: bool) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        loads(textwrap.dedent(text), source="bad.yaml", check_files=kw.get("check_files", False))
    return [str(e) for e in ei.value.errors]


def _ok(text: str, **kw: bool) -> Config:
    return loads(textwrap.dedent(text), source="ok.yaml", check_files=kw.get("check_files", False))


# (id, yaml text, exact expected error lines)
BAD: list[tuple[str, str, list[str]]] = [
    (
        "service-port-zero",
        BASE.replace("port: 80\n    real", "port: 0\n    real"),
        ["bad.yaml:5: services[0].port: must be 1..65535, got 0"],
    ),
    (
        "real-server-port-too-big",
        BASE + "      - {address: 198.51.100.3, port: 70000}\n",
        ["bad.yaml:8: services[0].real_servers[1].port: must be 1..65535, got 70000"],
    ),
    (
        "unknown-key-with-hint",
        BASE.replace("  - name: web", "  - nmae: web"),
        [
            "bad.yaml:3: services[0].nmae: unknown key (did you mean 'name'?)",
            "bad.yaml:3: services[0].name: missing (required)",
        ],
    ),
    (
        "unknown-top-level-key-lists-allowed",
        BASE + "frobnicate: 1\n",
        [
            "bad.yaml:8: frobnicate: unknown key (allowed: node, api, dataplane, logging, "
            "defaults, services, ha, host, nat)"
        ],
    ),
    (
        "bool-is-not-int",
        BASE.replace("port: 80\n    real", "port: true\n    real"),
        ["bad.yaml:5: services[0].port: must be an integer, got boolean true"],
    ),
    (
        "quoted-number-is-not-int",
        BASE.replace("port: 80\n    real", 'port: "80"\n    real'),
        ["bad.yaml:5: services[0].port: must be an integer, got string '80'"],
    ),
    (
        "duplicate-yaml-key",
        BASE.replace("port: 80\n    real", "port: 80\n    port: 81\n    real"),
        ["bad.yaml:6: services[0].port: duplicate key (first at line 5)"],
    ),
    (
        "duplicate-service-name",
        BASE + "  - {name: web, vip: 192.0.2.11, port: 80}\n",
        ["bad.yaml:8: services[1].name: duplicate service name 'web' (services[0])"],
    ),
    (
        "duplicate-protocol-vip-port",
        BASE + "  - {name: web2, vip: 192.0.2.10, port: 80, protocol: tcp}\n",
        [
            "bad.yaml:8: services[1]: duplicate service tcp 192.0.2.10:80 "
            "(same protocol, vip and port as services[0])"
        ],
    ),
    (
        "duplicate-real-server",
        BASE + "      - {address: 198.51.100.2, port: 80, weight: 5}\n",
        [
            "bad.yaml:8: services[0].real_servers[1]: duplicate real server 198.51.100.2:80 "
            "(also services[0].real_servers[0])"
        ],
    ),
    (
        "bad-ipv4-address",
        BASE.replace("vip: 192.0.2.10", "vip: 192.0.2.300"),
        ["bad.yaml:4: services[0].vip: invalid IP address '192.0.2.300'"],
    ),
    (
        "multicast-vip",
        BASE.replace("vip: 192.0.2.10", "vip: 224.0.0.18"),
        ["bad.yaml:4: services[0].vip: must not be a multicast address, got 224.0.0.18"],
    ),
    (
        "rise-zero-fall-negative",
        BASE + "    check: {rise: 0, fall: -1}\n",
        [
            "bad.yaml:8: services[0].check.rise: must be 1..1000, got 0",
            "bad.yaml:8: services[0].check.fall: must be 1..1000, got -1",
        ],
    ),
    (
        "timeout-not-below-interval",
        BASE + "    check: {interval: 1s, timeout: 1s}\n",
        ["bad.yaml:8: services[0].check.timeout: must be less than interval (1s), got 1s"],
    ),
    (
        "unknown-scheduler",
        BASE + "    scheduler: wrrr\n",
        [
            "bad.yaml:8: services[0].scheduler: must be one of rr, wrr, lc, wlc, lblc, lblcr, "
            "dh, sh, sed, nq, mh, fo, ovf, got 'wrrr' (did you mean 'wrr'?)"
        ],
    ),
    (
        "unknown-forwarding",
        BASE + "    forwarding: direct\n",
        ["bad.yaml:8: services[0].forwarding: must be one of nat, dr, tunnel, got 'direct'"],
    ),
    (
        "unknown-protocol",
        BASE + "    protocol: sctp\n",
        ["bad.yaml:8: services[0].protocol: must be one of tcp, udp, got 'sctp'"],
    ),
    (
        "unknown-on-failure",
        BASE + "    on_failure: drop\n",
        ["bad.yaml:8: services[0].on_failure: must be one of remove, weight0, got 'drop'"],
    ),
    (
        "unknown-check-type",
        BASE + "    check: {type: icmp}\n",
        [
            "bad.yaml:8: services[0].check.type: must be one of tcp, http, https, exec, none, "
            "got 'icmp'"
        ],
    ),
    (
        "vip-and-real-server-families-differ",
        BASE.replace("vip: 192.0.2.10", "vip: 2001:db8::10"),
        [
            "bad.yaml:7: services[0].real_servers[0].address: IPv4 real server 198.51.100.2 "
            "for an IPv6 vip 2001:db8::10"
        ],
    ),
    (
        "exec-check-without-command",
        BASE + "    check: {type: exec}\n",
        [
            "bad.yaml:8: services[0].check.command: exec checks need a command: a list "
            "[program, args...]; {address} and {port} are substituted"
        ],
    ),
    (
        "exec-command-as-string",
        BASE + '    check: {type: exec, command: "/usr/lib/probe {address}"}\n',
        [
            "bad.yaml:8: services[0].check.command: must be a list of strings "
            "[program, args...], not one string: commands never run through a shell"
        ],
    ),
    (
        "http-only-field-on-tcp-check",
        BASE + "    check: {type: tcp, expect_status: 200}\n",
        ["bad.yaml:8: services[0].check.expect_status: only applies to http/https checks, not tcp"],
    ),
    (
        "verify-tls-on-http-check",
        BASE + "    check: {type: http, verify_tls: false}\n",
        ["bad.yaml:8: services[0].check.verify_tls: only applies to https checks, not http"],
    ),
    (
        "weight-out-of-range",
        BASE + "      - {address: 198.51.100.3, weight: 65536}\n"
        "      - {address: 198.51.100.4, weight: -1}\n",
        [
            "bad.yaml:8: services[0].real_servers[1].weight: must be 0..65535, got 65536",
            "bad.yaml:9: services[0].real_servers[2].weight: must be 0..65535, got -1",
        ],
    ),
    (
        "sorry-server-without-port",
        BASE + "    sorry_server: 198.51.100.9\n",
        [
            'bad.yaml:8: services[0].sorry_server: must be "address:port" or "[v6]:port", '
            "got '198.51.100.9'"
        ],
    ),
    (
        "sorry-server-v6-without-brackets",
        BASE.replace("vip: 192.0.2.10", "vip: 2001:db8::10").replace("198.51.100.2", "2001:db8::2")
        + "    sorry_server: 2001:db8::9:80\n",
        [
            'bad.yaml:8: services[0].sorry_server: must be "address:port" or "[v6]:port", '
            "got '2001:db8::9:80' (IPv6 needs brackets: '[2001:db8::9]:port')"
        ],
    ),
    (
        "persistence-negative",
        BASE + "    persistence: -5s\n",
        ["bad.yaml:8: services[0].persistence: must be 0..24h, got -5s"],
    ),
    (
        "persistence-fractional",
        BASE + "    persistence: 1500ms\n",
        ["bad.yaml:8: services[0].persistence: must be whole seconds, got 1.5s"],
    ),
    (
        "jitter-out-of-range",
        BASE + "    check: {jitter: 1.0}\n  - {name: b, vip: 192.0.2.11, port: 80, "
        "check: {jitter: -0.1}}\n",
        [
            "bad.yaml:8: services[0].check.jitter: must be >= 0 and < 1, got 1.0",
            "bad.yaml:9: services[1].check.jitter: must be >= 0 and < 1, got -0.1",
        ],
    ),
    (
        "api-listen-without-port",
        BASE + "api: {listen: localhost}\n",
        [
            'bad.yaml:8: api.listen: must be "host:port", "[v6]:port" or "unix:/path", '
            "got 'localhost'"
        ],
    ),
    (
        "api-listen-relative-unix",
        BASE + "api: {listen: 'unix:run/hacontrol.sock'}\n",
        [
            "bad.yaml:8: api.listen: unix socket path must be absolute, "
            "got 'unix:run/hacontrol.sock'"
        ],
    ),
    (
        "logging-level",
        BASE + "logging: {level: verbose}\n",
        [
            "bad.yaml:8: logging.level: must be one of debug, info, warning, error, critical, "
            "got 'verbose'"
        ],
    ),
    (
        "duration-garbage-and-zero",
        BASE + "    check: {interval: fast, timeout: 0s}\n",
        [
            "bad.yaml:8: services[0].check.interval: must be a duration like 200ms, 1s, 1.5s, "
            "2m or a number of seconds, got string 'fast'",
            "bad.yaml:8: services[0].check.timeout: must be 10ms..10m, got 0s",
        ],
    ),
    (
        "regex-must-compile",
        BASE + "    check: {type: http, expect_regex: '(ok'}\n",
        [
            "bad.yaml:8: services[0].check.expect_regex: invalid regular expression: "
            "missing ), unterminated subpattern at position 0"
        ],
    ),
    (
        "expect-status-out-of-range",
        BASE + "    check: {type: http, expect_status: [200, 99]}\n",
        ["bad.yaml:8: services[0].check.expect_status[1]: must be 100..599, got 99"],
    ),
    (
        "dr-cannot-translate-ports",
        BASE.replace("port: 80}", "port: 8080}") + "    forwarding: dr\n",
        [
            "bad.yaml:7: services[0].real_servers[0].port: must equal the service port (80) "
            "with forwarding dr: only nat can translate ports, got 8080"
        ],
    ),
    (
        "real-server-is-the-vip",
        BASE + "      - {address: 192.0.2.10}\n",
        ["bad.yaml:8: services[0].real_servers[1].address: is the service vip 192.0.2.10"],
    ),
    (
        "service-name-with-space",
        BASE.replace("name: web", "name: my web"),
        [
            "bad.yaml:3: services[0].name: must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, got 'my web'"
        ],
    ),
    (
        "missing-node",
        "services: []\n",
        ["bad.yaml:1: node: missing (required)"],
    ),
    (
        "root-is-a-list",
        "- node\n",
        ["bad.yaml:1: <root>: must be a mapping, got a list"],
    ),
    (
        "empty-file",
        "# nothing\n",
        ["bad.yaml:1: <root>: the config is empty; expected a mapping with at least 'node'"],
    ),
    (
        "yaml-syntax-error-bad-indent",
        "node: {name: d1}\nservices:\n  - name: web\n   vip: 192.0.2.10\n",
        [
            "bad.yaml:4: <syntax>: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block collection started at line 3)"
        ],
    ),
    (
        "yaml-syntax-error",
        "node: name: d1\n",
        ["bad.yaml:1: <syntax>: mapping values are not allowed here"],
    ),
    (
        "dataplane-kind-and-table",
        BASE + "dataplane: {kind: ipvsadm, nft_table: 'my table', resync_interval: 0}\n",
        [
            "bad.yaml:8: dataplane.kind: must be one of auto, ipvs, nftables, memory, "
            "got 'ipvsadm' (did you mean 'ipvs'?)",
            "bad.yaml:8: dataplane.nft_table: must be 1-64 letters, digits, '_' or '-', "
            "starting with a letter or '_', got 'my table'",
            "bad.yaml:8: dataplane.resync_interval: must be 1s..1h, got 0",
        ],
    ),
    (
        "defaults-timeout-vs-service-interval",
        "defaults:\n  check: {timeout: 2s, interval: 5s}\n" + BASE + "    check: {interval: 1s}\n",
        ["bad.yaml:10: services[0].check.interval: must be greater than timeout (2s), got 1s"],
    ),
    (
        "defaults-alone-bad-reported-once",
        "defaults:\n  check: {timeout: 1s}\n" + BASE + "  - {name: b, vip: 192.0.2.11, port: 80}\n",
        ["bad.yaml:2: defaults.check.timeout: must be less than interval (1s), got 1s"],
    ),
]

BAD += [
    (
        "multiple-documents",
        "node: {name: d1}\n---\nnode: {name: d2}\n",
        [
            "bad.yaml:2: <syntax>: expected a single document in the stream, "
            "but found another document"
        ],
    ),
    (
        "exec-without-command-points-at-check-key",
        BASE + "    check:\n      type: exec\n      interval: 2s\n",
        [
            "bad.yaml:8: services[0].check.command: exec checks need a command: a list "
            "[program, args...]; {address} and {port} are substituted"
        ],
    ),
    (
        "empty-command",
        BASE + "    check: {type: exec, command: []}\n",
        ["bad.yaml:8: services[0].check.command: must not be empty"],
    ),
    (
        "choice-case-hint",
        BASE + "logging: {level: INFO}\n",
        [
            "bad.yaml:8: logging.level: must be one of debug, info, warning, error, critical, "
            "got 'INFO' (did you mean 'info'?)"
        ],
    ),
    (
        "ha-empty-mapping",
        "node: {name: d1}\nha: {}\n",
        [
            "bad.yaml:2: ha.bind: missing (required)",
            "bad.yaml:2: ha.peers: missing (required)",
            "bad.yaml:2: ha.secret_file: missing (required)",
        ],
    ),
    (
        "services-not-a-list",
        "node: {name: d1}\nservices: {web: {}}\n",
        ["bad.yaml:2: services: must be a list, got a mapping"],
    ),
]

HA_BASE = """\
node: {name: d1}
ha:
  bind: "192.0.2.11:5405"
  peers: ["192.0.2.12:5405"]
  secret_file: /etc/hacontrol/ha.key
"""

BAD += [
    (
        "ha-priority-dead-after-lease",
        HA_BASE + "  priority: 0\n  dead_after: 1\n  interval: 1s\n",
        [
            "bad.yaml:6: ha.priority: must be 1..254, got 0",
            "bad.yaml:7: ha.dead_after: must be 2..1000, got 1",
        ],
    ),
    (
        "ha-lease-not-above-dead-time",
        HA_BASE + "  interval: 1s\n  dead_after: 3\n  lease: 3s\n",
        [
            "bad.yaml:8: ha.lease: must be greater than interval * dead_after (3s), got 3s",
        ],
    ),
    (
        "ha-peer-family-and-self",
        HA_BASE.replace('["192.0.2.12:5405"]', '["[2001:db8::12]:5405", "192.0.2.11:5405"]'),
        [
            "bad.yaml:4: ha.peers[0]: IPv6 peer for an IPv4 bind 192.0.2.11:5405",
            "bad.yaml:4: ha.peers[1]: is this node's own bind address 192.0.2.11:5405",
        ],
    ),
    (
        "ha-missing-secret-and-relative-path",
        HA_BASE.replace("  secret_file: /etc/hacontrol/ha.key\n", "")
        + "  notify: /etc/hacontrol/notify {role}\n",
        [
            "bad.yaml:2: ha.secret_file: missing (required)",
            "bad.yaml:5: ha.notify: must be a list of strings [program, args...], not one "
            "string: commands never run through a shell",
        ],
    ),
    (
        "ha-vips",
        HA_BASE + "  vips:\n    - {address: 192.0.2.20/33, interface: eth0}\n"
        "    - {address: 192.0.2.21/24, interface: 'eth0/x'}\n"
        "    - {address: 192.0.2.22/24, interface: eth0}\n"
        "    - {address: 192.0.2.22/25, interface: eth1}\n",
        [
            "bad.yaml:7: ha.vips[0].address: invalid address/prefix '192.0.2.20/33'",
            "bad.yaml:8: ha.vips[1].interface: must be an interface name (1-15 characters, "
            "no '/' or space), got 'eth0/x'",
            "bad.yaml:10: ha.vips[3].address: duplicate vip 192.0.2.22 (also ha.vips[2])",
        ],
    ),
    (
        "ha-track-and-announce",
        HA_BASE + "  track: {gateway: 192.0.2.999, gateway_fall: 0, priority_penalty: 300}\n"
        "  announce: {count: -1, interval: 0ms}\n",
        [
            "bad.yaml:6: ha.track.gateway: invalid IP address '192.0.2.999'",
            "bad.yaml:6: ha.track.gateway_fall: must be 1..1000, got 0",
            "bad.yaml:6: ha.track.priority_penalty: must be 0..254, got 300",
            "bad.yaml:7: ha.announce.count: must be 0..100, got -1",
            "bad.yaml:7: ha.announce.interval: must be 10ms..10s, got 0ms",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_exact_errors(text: str, expected: list[str]) -> None:
    assert _errors(text) == expected


def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 30
    assert len({c[0] for c in BAD}) == len(BAD)


def test_many_errors_reported_at_once_in_file_order() -> None:
    text = """\
    node: {name: d1}
    logging: {level: loud}
    services:
      - name: web
        vip: 192.0.2.10
        port: 0
        scheduler: nope
        real_servers:
          - {address: 198.51.100.2, port: 80, wieght: 2}
    """
    assert _errors(text) == [
        "bad.yaml:2: logging.level: must be one of debug, info, warning, error, critical, "
        "got 'loud'",
        "bad.yaml:6: services[0].port: must be 1..65535, got 0",
        "bad.yaml:7: services[0].scheduler: must be one of rr, wrr, lc, wlc, lblc, lblcr, dh, "
        "sh, sed, nq, mh, fo, ovf, got 'nope'",
        "bad.yaml:9: services[0].real_servers[0].wieght: unknown key (did you mean 'weight'?)",
    ]


def test_issue_and_error_formatting() -> None:
    issue = ConfigIssue(
        "configs/x.yaml", 12, "services[0].real_servers[1].port", "must be 1..65535"
    )
    assert str(issue) == "configs/x.yaml:12: services[0].real_servers[1].port: must be 1..65535"
    err = ConfigError([issue, ConfigIssue("configs/x.yaml", 13, "a", "b")])
    assert str(err) == (
        "configs/x.yaml:12: services[0].real_servers[1].port: must be 1..65535\n"
        "configs/x.yaml:13: a: b"
    )
    assert format_errors(err) == str(err) + "\nconfigs/x.yaml: 2 errors"


def test_load_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as ei:
        load(path)
    assert [str(e) for e in ei.value.errors] == [
        f"{path}: <file>: cannot read: No such file or directory"
    ]


def test_load_reports_path_and_sets_source(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(BASE.replace("port: 80\n    real", "port: 0\n    real"))
    with pytest.raises(ConfigError) as ei:
        load(str(path))
    assert str(ei.value) == f"{path}:5: services[0].port: must be 1..65535, got 0"
    path.write_text(BASE)
    assert load(str(path)).source == str(path)


def test_secret_file_existence_is_checked_unless_disabled(tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    text = HA_BASE.replace("/etc/hacontrol/ha.key", str(missing))
    assert _errors(text, check_files=True) == [
        f"bad.yaml:5: ha.secret_file: {missing}: cannot read: No such file or directory"
    ]
    assert _ok(text, check_files=False).ha is not None
    missing.write_bytes(b"k" * 32)
    cfg = _ok(text, check_files=True)
    assert cfg.ha is not None and cfg.ha.secret_file == str(missing)


def test_token_file_existence_is_checked(tmp_path: Path) -> None:
    token = tmp_path / "token"
    text = BASE + f"api: {{listen: '[::1]:9480', token_file: {token}}}\n"
    assert _errors(text, check_files=True) == [
        f"bad.yaml:8: api.token_file: {token}: cannot read: No such file or directory"
    ]
    token.write_text("t")
    assert _ok(text, check_files=True).api.token_file == str(token)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    cfg = load(str(path), check_files=False)
    assert cfg.source == str(path)
    assert len(cfg.digest) == 64


def test_examples_exist() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert names >= {
        "seed-cluster.yaml", "dr.yaml", "wrr-weights.yaml", "udp-dns.yaml", "ipv6.yaml",
        "multi-service.yaml", "ha-director-a.yaml", "ha-director-b.yaml",
    }  # fmt: skip


def test_seed_cluster_content() -> None:
    cfg = load(str(CONFIGS / "seed-cluster.yaml"), check_files=False)
    (web,) = cfg.services
    assert web.vip_endpoint == Endpoint(ipaddress.ip_address("192.168.88.23"), 80)
    assert (web.scheduler, web.forwarding, web.check.type) == ("rr", "nat", "http")
    assert [str(rs.endpoint) for rs in web.real_servers] == [
        "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80",
    ]  # fmt: skip


def test_ha_pair_examples_agree_on_digest() -> None:
    a = load(str(CONFIGS / "ha-director-a.yaml"), check_files=False)
    b = load(str(CONFIGS / "ha-director-b.yaml"), check_files=False)
    assert a.ha is not None and b.ha is not None
    assert a.node_name != b.node_name
    assert a.ha.priority != b.ha.priority
    assert a.digest == b.digest


def test_defaults_are_applied() -> None:
    cfg = _ok(
        """\
        node: {name: d1}
        defaults:
          check: {type: http, path: /healthz, interval: 2s, timeout: 1s, fall: 5}
        services:
          - name: web
            vip: 192.0.2.10
            port: 80
            real_servers:
              - {address: 198.51.100.2}
              - {address: 198.51.100.3, port: 8080, weight: 0}
          - name: ssh
            vip: 192.0.2.10
            port: 22
            check: {type: tcp, rise: 1}
        """
    )
    web, ssh = cfg.services
    assert web.check == CheckConfig(type="http", path="/healthz", interval=2.0, timeout=1.0, fall=5)
    # inherited http-only fields are dropped for a tcp check, not reported
    assert ssh.check == CheckConfig(type="tcp", interval=2.0, timeout=1.0, fall=5, rise=1)
    assert (web.protocol, web.scheduler, web.forwarding, web.on_failure) == (
        "tcp", "wrr", "nat", "remove",
    )  # fmt: skip
    assert web.real_servers[0].port == 80 and web.real_servers[0].weight == 1  # service port
    assert web.real_servers[1].port == 8080 and web.real_servers[1].weight == 0
    assert cfg.api.listen == "127.0.0.1:9480" and cfg.dataplane.kind == "auto"
    assert cfg.logging.level == "info" and cfg.ha is None and cfg.source == "ok.yaml"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0),
        ("3", 3.0), ("0.25", 0.25), ("'10'", 10.0), ("1500ms", 1.5),
    ],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    cfg = _ok(BASE + f"    check: {{interval: {text}, timeout: 100ms}}\n")
    assert cfg.services[0].check.interval == seconds


def test_zero_duration_where_allowed() -> None:
    cfg = _ok(BASE + "    persistence: 0s\n")
    assert cfg.services[0].persistence == 0.0
    cfg = _ok(BASE + "    persistence: 5m\n")
    assert cfg.services[0].persistence == 300.0


def test_expect_status_single_int_and_list() -> None:
    one = _ok(BASE + "    check: {type: http, expect_status: 204}\n")
    many = _ok(BASE + "    check: {type: https, expect_status: [301, 200, 200]}\n")
    assert one.services[0].check.expect_status == (204,)
    assert many.services[0].check.expect_status == (200, 301)


def test_exec_command_list() -> None:
    cfg = _ok(BASE + "    check: {type: exec, command: [/usr/lib/probe, '{address}', -t, 1.5]}\n")
    assert cfg.services[0].check.command == ("/usr/lib/probe", "{address}", "-t", "1.5")


def test_null_check_and_lists_mean_defaults_and_empty() -> None:
    cfg = _ok(
        BASE.replace("    real_servers:\n      - {address: 198.51.100.2, port: 80}\n", "")
        + "    check:\n    real_servers:\n"
    )
    assert cfg.services[0].check == CheckConfig() and cfg.services[0].real_servers == ()
    assert _ok("node: {name: d1}\nservices:\n").services == ()


def test_ha_lease_default_follows_slow_heartbeats() -> None:
    fast = _ok(HA_BASE + "  interval: 200ms\n")
    slow = _ok(HA_BASE + "  interval: 1s\n  dead_after: 4\n")
    assert fast.ha is not None and fast.ha.lease == 3.0  # the model default
    assert slow.ha is not None and slow.ha.lease == 8.0  # 2 x interval x dead_after


def test_same_vip_port_different_protocol_is_allowed() -> None:
    cfg = _ok(BASE + "  - {name: web-udp, vip: 192.0.2.10, port: 80, protocol: udp}\n")
    assert [s.protocol for s in cfg.services] == ["tcp", "udp"]


def test_dataplane_shorthand_and_mapping() -> None:
    assert _ok(BASE + "dataplane: nftables\n").dataplane.kind == "nftables"
    dp = _ok(
        BASE + "dataplane: {kind: memory, resync_interval: 1500ms, nft_table: hc_1,"
        " keep_on_stop: false, state_dir: /tmp/hc}\n"
    ).dataplane
    assert (dp.kind, dp.resync_interval, dp.nft_table, dp.keep_on_stop, dp.state_dir) == (
        "memory", 1.5, "hc_1", False, "/tmp/hc",
    )  # fmt: skip


def test_ipv6_service_and_endpoints() -> None:
    cfg = _ok(
        """\
        node: {name: d1}
        api: {listen: "[2001:db8::1]:9480"}
        services:
          - name: v6
            vip: 2001:db8::10
            port: 443
            sorry_server: "[2001:db8::99]:8080"
            real_servers: [{address: "2001:db8::2"}, {address: 2001:db8::3, port: 8443}]
        """
    )
    svc = cfg.services[0]
    assert str(svc.vip_endpoint) == "[2001:db8::10]:443"
    assert svc.sorry_server == Endpoint(ipaddress.ip_address("2001:db8::99"), 8080)
    assert [str(rs.endpoint) for rs in svc.real_servers] == [
        "[2001:db8::2]:443", "[2001:db8::3]:8443",
    ]  # fmt: skip


def test_ha_section_parsed() -> None:
    cfg = _ok(
        HA_BASE
        + """\
  priority: 150
  preempt: false
  preempt_delay: 0s
  interval: 200ms
  dead_after: 4
  vips:
    - {address: 192.0.2.23/24, interface: eth0}
    - {address: 198.51.100.1, interface: eth1}
  announce: {count: 3, interval: 50ms, refresh: 0}
  lease: 1s
  track: {interfaces: [eth0, eth1], gateway: 192.0.2.1, gateway_interval: 2s}
  notify: [/etc/hacontrol/notify, "{role}", "{reason}"]
  notify_timeout: 2s
"""
    )
    ha = cfg.ha
    assert ha is not None
    assert str(ha.bind) == "192.0.2.11:5405" and [str(p) for p in ha.peers] == ["192.0.2.12:5405"]
    assert (ha.priority, ha.preempt, ha.preempt_delay, ha.interval, ha.dead_after) == (
        150, False, 0.0, 0.2, 4,
    )  # fmt: skip
    assert [(str(v.address), v.interface) for v in ha.vips] == [
        ("192.0.2.23/24", "eth0"), ("198.51.100.1/32", "eth1"),
    ]  # fmt: skip
    assert (ha.announce.count, ha.announce.interval, ha.announce.refresh) == (3, 0.05, 0.0)
    assert ha.lease == 1.0 and ha.notify_timeout == 2.0
    assert ha.track.interfaces == ("eth0", "eth1") and str(ha.track.gateway) == "192.0.2.1"
    assert ha.track.gateway_interval == 2.0 and ha.track.gateway_fall == 3
    assert ha.notify == ("/etc/hacontrol/notify", "{role}", "{reason}")


@pytest.mark.parametrize("value", ["off", "'off'", "false", "null"])
def test_ha_lease_off(value: str) -> None:
    cfg = _ok(HA_BASE + f"  lease: {value}\n")
    assert cfg.ha is not None and cfg.ha.lease is None


def test_yaml_anchors_merge_keys_and_x_keys() -> None:
    cfg = _ok(
        """\
        node: {name: d1}
        x-check: &chk {type: http, path: /ping}
        services:
          - name: web
            vip: 192.0.2.10
            port: 80
            check: {<<: *chk, path: /health}
          - {name: ssh, vip: 192.0.2.10, port: 22, check: *chk}
        """
    )
    web, ssh = cfg.services
    assert (web.check.type, web.check.path) == ("http", "/health")
    assert (ssh.check.type, ssh.check.path) == ("http", "/ping")


def test_recursive_merge_is_an_error_not_a_crash() -> None:
    assert _errors("node: &x {<<: *x}\n") == [
        "bad.yaml:1: node.name: missing (required)",
        "bad.yaml:1: node: '<<' merges a mapping into itself",
    ]


def test_mutated_examples_never_crash() -> None:
    """Random edits of the examples give a Config or a ConfigError with lines, nothing else."""
    import random

    rng = random.Random(7)
    texts = [p.read_text() for p in sorted(CONFIGS.glob("*.yaml"))]
    tokens = ["0", "-1", "1.5", "true", "null", "[]", "{}", "'x'", "1s", "a:b", "[1, 2]",
              "{a: 1}", "''", "2001:db8::1", "192.0.2.1/24", '"[::1]:80"', ".inf", "0x1F",
              "1:30", "*nope", "&a 1", "!!binary aGk=", "2001-12-14", "<<: {}"]  # fmt: skip
    for _ in range(400):
        lines = rng.choice(texts).splitlines()
        for _ in range(rng.randint(1, 3)):
            j = rng.randrange(len(lines))
            head = lines[j].split(":", 1)[0] if ":" in lines[j] else lines[j]
            lines[j] = f"{head}: {rng.choice(tokens)}" if rng.random() < 0.8 else " " + lines[j]
        try:
            loads("\n".join(lines), source="m.yaml", check_files=False)
        except ConfigError as e:
            assert e.errors and all(i.line >= 1 and i.file == "m.yaml" for i in e.errors)


def _digest(text: str) -> str:
    return _ok(text).digest


PAIR = (
    HA_BASE
    + "  priority: 150\n  vips: [{address: 192.0.2.23/24, interface: eth0}]\n"
    + """\
services:
  - name: web
    vip: 192.0.2.23
    port: 80
    real_servers: [{address: 198.51.100.2}, {address: 198.51.100.3, weight: 2}]
  - name: dns
    vip: 192.0.2.23
    port: 53
    protocol: udp
"""
)


def test_digest_stable_and_ignores_node_only_fields() -> None:
    base = _digest(PAIR)
    assert base == _digest(PAIR) and len(base) == 64
    node_only = (
        PAIR.replace("name: d1", "name: d2")
        .replace("192.0.2.11:5405", "192.0.2.12:5406")
        .replace('["192.0.2.12:5405"]', '["192.0.2.11:5405", "203.0.113.11:5405"]')
        .replace("priority: 150", "priority: 100")
        .replace("interface: eth0", "interface: ens3")
        + "api: {listen: 'unix:/run/hacontrol.sock'}\nlogging: {level: debug}\n"
    )
    assert _digest(node_only) == base
    reordered = PAIR.replace(
        "[{address: 198.51.100.2}, {address: 198.51.100.3, weight: 2}]",
        "[{address: 198.51.100.3, weight: 2}, {address: 198.51.100.2}]",
    )
    assert _digest(reordered) == base


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("weight: 2", "weight: 3"),
        ("port: 53", "port: 5353"),
        ("192.0.2.23/24", "192.0.2.24/24"),
        ("protocol: udp", "protocol: tcp"),
    ],
)
def test_digest_changes_with_shared_fields(old: str, new: str) -> None:
    assert _digest(PAIR.replace(old, new)) != _digest(PAIR)


def test_digest_function_matches_config() -> None:
    cfg = _ok(PAIR)
    assert config.compute_digest(cfg.services, cfg.ha) == cfg.digest
    assert dataclasses.replace(cfg, node_name="other").digest == cfg.digest


def test_docs_describe_every_key() -> None:
    from hacontrol.config import ha as config_ha

    doc = (CONFIGS.parent / "docs" / "config.md").read_text()
    keys = (
        config.TOP_KEYS + config.SERVICE_KEYS + config.REAL_SERVER_KEYS + config.CHECK_KEYS
        + config_ha.HA_KEYS + ("resync_interval", "nft_table", "keep_on_stop", "state_dir")
        + ("gateway_interval", "gateway_fall", "priority_penalty", "refresh", "level", "format")
    )  # fmt: skip
    missing = [k for k in keys if f"`{k}`" not in doc and f".{k}`" not in doc]
    assert missing == []


# -- cross-field rules are checked whatever else is wrong: one run shows every problem ----------


def test_cross_field_errors_come_with_the_field_errors() -> None:
    text = """\
    node: {name: d1}
    services:
      - name: web
        vip: 192.0.2.10
        port: 80
        scheduler: nope
        check: {type: tcp, path: /x, interval: 1s, timeout: 2s}
        real_servers:
          - {address: 198.51.100.2, weight: -1}
          - {address: 198.51.100.2}
      - name: web
        vip: 192.0.2.10
        port: 80
        forwarding: dr
        real_servers: [{address: 198.51.100.3, port: 81}]
    ha:
      bind: "192.0.2.11:5405"
      peers: ["192.0.2.12:5405"]
      secret_file: relative.key
      interval: 1s
      lease: 2s
      vips:
        - {address: 192.0.2.23/24, interface: "bad/name"}
        - {address: 192.0.2.23/24, interface: eth0}
    """
    assert _errors(text) == [
        "bad.yaml:6: services[0].scheduler: must be one of rr, wrr, lc, wlc, lblc, lblcr, dh, "
        "sh, sed, nq, mh, fo, ovf, got 'nope'",
        "bad.yaml:7: services[0].check.path: only applies to http/https checks, not tcp",
        "bad.yaml:7: services[0].check.timeout: must be less than interval (1s), got 2s",
        "bad.yaml:9: services[0].real_servers[0].weight: must be 0..65535, got -1",
        "bad.yaml:10: services[0].real_servers[1]: duplicate real server 198.51.100.2:80 "
        "(also services[0].real_servers[0])",
        "bad.yaml:11: services[1]: duplicate service tcp 192.0.2.10:80 (same protocol, vip and "
        "port as services[0])",
        "bad.yaml:11: services[1].name: duplicate service name 'web' (services[0])",
        "bad.yaml:15: services[1].real_servers[0].port: must equal the service port (80) with "
        "forwarding dr: only nat can translate ports, got 81",
        "bad.yaml:19: ha.secret_file: must be an absolute path, got 'relative.key'",
        "bad.yaml:21: ha.lease: must be greater than interval * dead_after (3s), got 2s",
        "bad.yaml:23: ha.vips[0].interface: must be an interface name (1-15 characters, no '/' "
        "or space), got 'bad/name'",
        "bad.yaml:24: ha.vips[1].address: duplicate vip 192.0.2.23 (also ha.vips[0])",
    ]


def test_no_cross_field_error_from_an_invalid_value() -> None:
    """A rule reading an invalid field stays quiet: the field's own error is the one line."""
    text = BASE.replace("port: 80\n    real", "port: 0\n    forwarding: dr\n    real")
    assert _errors(text + "      - {address: 198.51.100.3, port: 81}\n") == [
        "bad.yaml:5: services[0].port: must be 1..65535, got 0",
    ]
    assert _errors(HA_BASE + "  interval: 0\n  lease: 1s\n") == [
        "bad.yaml:6: ha.interval: must be 10ms..10s, got 0",
    ]


# -- duration fields: each has a documented range ------------------------------------------------

# where each duration field goes in a config (a template with {v})
DURATION_AT = {
    "check.interval": BASE + "    check: {interval: VALUE, timeout: 10ms}\n",
    "check.timeout": BASE + "    check: {timeout: VALUE, interval: 1h}\n",
    "services[].persistence": BASE + "    persistence: VALUE\n",
    "dataplane.resync_interval": BASE + "dataplane: {resync_interval: VALUE}\n",
    "dataplane.drain_removed": BASE + "dataplane: {drain_removed: VALUE}\n",
    "ha.interval": HA_BASE + "  interval: VALUE\n  lease: 24h\n",
    "ha.preempt_delay": HA_BASE + "  preempt_delay: VALUE\n",
    "ha.notify_timeout": HA_BASE + "  notify_timeout: VALUE\n",
    "ha.lease": HA_BASE + "  interval: 10ms\n  lease: VALUE\n",
    "ha.announce.interval": HA_BASE + "  announce: {interval: VALUE}\n",
    "ha.announce.refresh": HA_BASE + "  announce: {refresh: VALUE}\n",
    "ha.track.gateway_interval": HA_BASE + "  track: {gateway_interval: VALUE}\n",
}


def test_every_duration_field_has_a_case() -> None:
    from hacontrol.config.limits import DURATIONS

    assert set(DURATION_AT) == set(DURATIONS)


@pytest.mark.parametrize("field", sorted(DURATION_AT))
def test_duration_bounds(field: str) -> None:
    from hacontrol.config.limits import DURATIONS
    from hacontrol.config.scalars import fmt_duration

    span, template = DURATIONS[field], DURATION_AT[field]
    _ok(template.replace("VALUE", str(span.lo)))  # both ends are in range
    _ok(template.replace("VALUE", str(span.hi)))
    outside = [str(span.hi * 1.001), "1.0e+12", "-1"] + ([str(span.lo * 0.999)] if span.lo else [])
    lo = fmt_duration(span.lo) if span.lo else "0"
    for v in outside:
        errors = _errors(template.replace("VALUE", v))
        want = f"must be {'0 (off) or ' if span.off else ''}{lo}..{fmt_duration(span.hi)}, got {v}"
        assert len(errors) == 1 and errors[0].endswith(f"{field.split('.')[-1]}: {want}"), errors
    if span.off:
        _ok(template.replace("VALUE", "0"))


def test_interval_from_the_issue_is_refused() -> None:
    assert _errors(HA_BASE + "  interval: 0.000000001\n") == [
        "bad.yaml:6: ha.interval: must be 10ms..10s, got 0.000000001"
    ]
    assert _errors(HA_BASE + "  interval: 1000000000000\n") == [
        "bad.yaml:6: ha.interval: must be 10ms..10s, got 1000000000000"
    ]


def test_docs_give_each_duration_range() -> None:
    from hacontrol.config.limits import DURATIONS
    from hacontrol.config.scalars import fmt_duration

    doc = (CONFIGS.parent / "docs" / "config.md").read_text()
    for field, span in DURATIONS.items():
        key = field.rsplit(".", 1)[-1]
        rows = [ln for ln in doc.splitlines() if ln.startswith(f"| `{key}`") or f".{key}`" in ln]
        lo = fmt_duration(span.lo) if span.lo else "0"
        want = f"{lo}..{fmt_duration(span.hi)}"
        assert any(want in row for row in rows), (field, want)


# -- hostile files: alias and merge-key bombs, deep nesting, floods of errors, slow walks -------


def _laughs(levels: int = 9) -> str:
    """The billion laughs: each level a list of ten aliases of the one before (10^9 nodes)."""
    lines = ["node: {name: d1}", 'x-l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nservices: *l{levels}\n"


def _merge_bomb(levels: int = 11, fan: int = 8, leaf: str = "{k: 1}") -> str:
    """Nested merge keys, ``<<: [*a, *a, ...]``: each level merges the one before ``fan`` times
    (the shape of the 1,147-byte file of the report)."""
    lines = ["node: {name: d1}", f"x-0: &a0 {leaf}"]
    lines += [
        f"x-{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * fan)}], k{i}: 1}}"
        for i in range(1, levels + 1)
    ]
    return "\n".join(lines) + f"\nservices:\n  - {{<<: *a{levels}, name: web, vip: 192.0.2.10}}\n"


BOMBS = {
    "billion-laughs": (_laughs(), 7),
    "merge-keys": (_merge_bomb(), 8),
    # each expansion of the leaf is an error: the 894-byte file that printed 1,000,000 lines
    "merge-keys-each-an-error": (_merge_bomb(levels=6, fan=10, leaf="{<<: [1]}"), 7),
    "alias-list-of-a-service": (
        "node: {name: d1}\nx-s: &s {name: web, vip: 192.0.2.10, port: 0, wat: 1}\n"
        + "x-a: &a [" + ", ".join(["*s"] * 100) + "]\n"
        + "x-b: &b [" + ", ".join(["*a"] * 100) + "]\n"
        + "services: [" + ", ".join(["*b"] * 100) + "]\n",
        5,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_alias_bombs_are_refused_with_one_line(name: str) -> None:
    text, line = BOMBS[name]
    assert len(text) < 2000
    with pytest.raises(ConfigError) as ei:
        loads(text, source="bomb.yaml", check_files=False)
    err = ei.value
    assert len(err.errors) == 1 and err.total == 1
    issue = err.errors[0]
    assert (issue.line, issue.field) == (line, "<root>"), str(issue)
    assert issue.reason.startswith("aliases and merge keys expand this node to ")
    assert issue.reason.endswith("at least 200,000): refused as an alias bomb")
    assert len(format_errors(err)) < 400


def test_aliases_within_the_bound_still_work() -> None:
    """A pool of real servers shared by two services, a check merged into both: fine."""
    pool = ", ".join(f"{{address: 198.51.100.{i}}}" for i in range(1, 101))
    cfg = _ok(
        f"""\
        node: {{name: d1}}
        x-pool: &pool [{pool}]
        x-check: &chk {{type: http, path: /healthz}}
        services:
          - {{name: web, vip: 192.0.2.10, port: 80, check: {{<<: *chk}}, real_servers: *pool}}
          - {{name: tls, vip: 192.0.2.10, port: 443, check: *chk, real_servers: *pool}}
        """
    )
    assert [len(s.real_servers) for s in cfg.services] == [100, 100]


def test_error_flood_is_capped_and_counted() -> None:
    """300 services reached through aliases, each with 2 errors: 100 lines, then the count."""
    text = (
        "node: {name: d1}\nx-s: &s {name: web, vip: 192.0.2.10, port: 0, wat: 1}\n"
        + "services: ["
        + ", ".join(["*s"] * 300)
        + "]\n"
    )
    with pytest.raises(ConfigError) as ei:
        loads(text, source="f.yaml", check_files=False)
    err = ei.value
    assert len(err.errors) == 100
    assert err.total == 300 * 2 + 299  # a bad port, an unknown key; the name is a duplicate
    lines = format_errors(err).splitlines()
    assert lines[0] == "f.yaml:2: services[1].name: duplicate service name 'web' (services[0])"
    assert lines[-2:] == [f"... and {err.total - 100} more", f"f.yaml: {err.total} errors"]
    assert len(lines) == 102


def test_the_same_error_through_many_aliases_is_reported_once() -> None:
    text = _merge_bomb(levels=3, fan=10, leaf="{<<: [1]}")  # 1000 expansions of one bad value
    allowed = ", ".join(config.SERVICE_KEYS)
    assert _errors(text) == [
        "bad.yaml:2: services[0]: '<<' needs a mapping or a list of mappings",
        f"bad.yaml:3: services[0].k1: unknown key (allowed: {allowed})",
        f"bad.yaml:4: services[0].k2: unknown key (allowed: {allowed})",
        f"bad.yaml:5: services[0].k3: unknown key (allowed: {allowed})",
        "bad.yaml:7: services[0].port: missing (required)",
    ]


@pytest.mark.parametrize("kind", ["flow", "block", "merge-chain"])
def test_deep_nesting_is_refused(kind: str) -> None:
    if kind == "flow":  # deeper than libyaml's own limit (1000): the Python composer recurses
        text = "node: {name: d1}\nservices: " + "[" * 5000 + "]" * 5000 + "\n"
    elif kind == "block":
        text = "node: {name: d1}\nservices:\n" + "".join("  " * i + "-\n" for i in range(200))
    else:  # each level merges the one before: the walk would recurse once per level
        text = "node: {name: d1}\nx-0: &m0 {a: 1}\n" + "".join(
            f"x-{i}: &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 300)
        )
    with pytest.raises(ConfigError) as ei:
        loads(text, source="deep.yaml", check_files=False)
    (issue,) = ei.value.errors
    assert issue.field == "<root>" and "nested more than 64 levels deep" in issue.reason
    assert issue.line >= 2


def test_the_walk_stops_at_its_time_budget() -> None:
    """A clock that moves 1 s per look: the walk stops after the 60 s budget, at a line."""
    ticks = iter(range(10**6))
    text = BASE + "".join(
        f"  - {{name: s{i}, vip: 192.0.2.10, port: {i + 1}, scheduler: x}}\n" for i in range(1, 200)
    )
    with pytest.raises(ConfigError) as ei:
        loads(text, source="slow.yaml", check_files=False, clock=lambda: float(next(ticks)))
    last = ei.value.errors[-1]
    assert last.field == "<root>" and last.reason.startswith("validation took longer than 1m")
    assert 8 <= last.line < 206  # somewhere in the services, not at the end
    assert 0 < len(ei.value.errors) < 100  # the errors found before it are kept


def test_huge_numbers_and_values_are_errors_not_crashes() -> None:
    errors = _errors(BASE.replace("port: 80\n    real", "port: " + "9" * 5000 + "\n    real"))
    assert len(errors) == 1 and errors[0].startswith("bad.yaml:5: services[0].port: must be 1..")
    assert len(errors[0]) < 500 and errors[0].endswith(" chars)")
    errors = _errors(BASE.replace("name: web", "name: " + "w" * 100_000))
    assert len(errors) == 1 and len(errors[0]) < 500


# -- the secret files: check applies the rules run applies -------------------------------------


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b" \n\t\n", "the file holds only whitespace"),
        (b"8 bytes!\n", "the key must be at least 16 bytes (surrounding whitespace not counted), "
         "got 8"),
        (b"k" * 4097, "the file is larger than 4096 bytes"),
    ],
)  # fmt: skip
def test_secret_file_content_is_checked_like_run_does(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    from hacontrol.ha.transport import load_key

    key = tmp_path / "ha.key"
    key.write_bytes(content)
    text = HA_BASE.replace("/etc/hacontrol/ha.key", str(key))
    assert _errors(text, check_files=True) == [f"bad.yaml:5: ha.secret_file: {key}: {reason}"]
    with pytest.raises(ValueError, match=re.escape(reason)):
        load_key(str(key))  # what the daemon reads at start
    key.write_bytes(b"  " + b"k" * 16 + b"\n")
    assert _ok(text, check_files=True).ha is not None
    assert load_key(str(key)) == b"k" * 16


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"\n  \n", "the file holds only whitespace"),
        (b"one\ntwo\n", "the token must be one line without control characters"),
        ("t\u00f6ken".encode(), "the token must be ASCII text"),
    ],
)
def test_token_file_content_is_checked_like_run_does(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    from hacontrol.process import StartError, read_token

    token = tmp_path / "token"
    token.write_bytes(content)
    text = BASE + f"api: {{listen: '[::1]:9480', token_file: {token}}}\n"
    assert _errors(text, check_files=True) == [f"bad.yaml:8: api.token_file: {token}: {reason}"]
    with pytest.raises(StartError, match=re.escape(reason)):
        read_token(str(token))
    token.write_bytes(b" s3cret token\n")
    assert _ok(text, check_files=True).api.token_file == str(token)
    assert read_token(str(token)) == "s3cret token"


def test_secret_file_that_is_a_directory(tmp_path: Path) -> None:
    text = HA_BASE.replace("/etc/hacontrol/ha.key", str(tmp_path))
    assert _errors(text, check_files=True) == [
        f"bad.yaml:5: ha.secret_file: {tmp_path}: cannot read: Is a directory"
    ]
