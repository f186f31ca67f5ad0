"""import-keepalived on the corpus in tests/unit/keepalived/good: every file converts, the YAML
is accepted by hacontrol's real loader, and the fields that carry keepalived's meaning are the
expected ones (not only "it loads"). Documentation addresses only; nothing is contacted.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import yaml

from hacontrol.cli import main
from hacontrol.config import ConfigError, load, loads
from hacontrol.migrate.command import import_keepalived
from hacontrol.model import Config

CORPUS = Path(__file__).resolve().parent / "keepalived"
GOOD = sorted(p for p in (CORPUS / "good").rglob("*.conf") if "conf.d" not in p.parts)


def _convert(name: str, host: str = "director-a") -> tuple[Config, str, dict[str, object]]:
    """(the config, the text of its comments joined as one line, the YAML as data)."""
    text, _ = import_keepalived(str(CORPUS / "good" / name), host)
    cfg = loads(text, source=name, check_files=False)
    return cfg, _comments(text), yaml.safe_load(text)


def _comments(text: str) -> str:
    parts = [ln.split("#", 1)[1].strip(" #") for ln in text.splitlines() if "#" in ln]
    return " ".join(parts)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: str(p.relative_to(CORPUS)))
@pytest.mark.parametrize("host", ["director-a", "director-b"])
def test_every_good_file_converts_to_a_loadable_config(path: Path, host: str) -> None:
    text, notes = import_keepalived(str(path), host)
    cfg = loads(text, source=str(path), check_files=False)
    assert cfg.node_name
    assert text.count("# keepalived:") + text.count("#   keepalived:") >= 0
    assert f"({notes})" in text  # the header counts the notes it says are there


def test_seed_nat_pair() -> None:
    cfg, text, _ = _convert("seed-nat-pair.conf")
    assert cfg.node_name == "director-a"
    web, tls = cfg.services
    assert (str(web.vip), web.port, web.protocol, web.scheduler, web.forwarding) == (
        "203.0.113.10", 80, "tcp", "rr", "nat")
    assert [(str(r.address), r.port, r.weight) for r in web.real_servers] == [
        ("198.51.100.2", 80, 1), ("198.51.100.3", 80, 1), ("198.51.100.4", 80, 1)]
    c = web.check
    assert (c.type, c.path, tuple(c.expect_status), c.interval, c.timeout, c.rise, c.fall) == (
        "http", "/healthz", (200,), 2.0, 1.0, 1, 3)  # retry 2 -> fall 3
    assert (tls.scheduler, tls.persistence, tls.check.type, tls.check.fall) == (
        "wlc", 300, "tcp", 2)
    assert [r.weight for r in tls.real_servers] == [2, 2, 1]
    ha = cfg.ha
    assert ha is not None
    assert (str(ha.bind), [str(p) for p in ha.peers]) == ("192.0.2.11:5405", ["192.0.2.12:5405"])
    assert (ha.priority, ha.preempt, ha.preempt_delay, ha.interval, ha.dead_after) == (
        150, True, 5.0, 1.0, 3)
    assert [(str(v.address), v.interface) for v in ha.vips] == [
        ("203.0.113.10/24", "eth0"), ("198.51.100.1/24", "eth1")]  # both instances, one group
    assert list(ha.track.interfaces) == ["eth0", "eth1"]
    assert ha.notify[:2] == ("/bin/sh", "-c") and ha.notify[-1] == "{role}"
    assert "/usr/local/sbin/ha-notify.sh master" in ha.notify[2]
    for note in ("authentication", "track_script", "vrrp_script chk_ipvs", "notification_email"):
        assert f"{note}" in text and "not carried over" in text, note
    assert "not all in one vrrp_sync_group" not in text


def test_notify_dispatcher_runs_the_scripts_of_the_role(tmp_path: Path) -> None:
    """The generated /bin/sh dispatcher, run for real: the master script on active only."""
    import subprocess

    cfg, _, _ = _convert("seed-nat-pair.conf")
    assert cfg.ha is not None
    log = tmp_path / "log"
    script = cfg.ha.notify[2].replace("/usr/local/sbin/ha-notify.sh", f"echo >>{log}")
    for role in ("active", "backup", "fault", "stopping", "starting"):
        subprocess.run(["/bin/sh", "-c", script, "hacontrol-notify", role], check=True,
                       timeout=10)
    assert log.read_text().split() == ["master", "backup", "fault"]


def test_generic_notify_gets_keepalived_arguments(tmp_path: Path) -> None:
    import subprocess

    cfg, _, _ = _convert("quoted.conf")
    assert cfg.ha is not None
    log = tmp_path / "log"
    script = cfg.ha.notify[2].replace("'/usr/local/sbin/notify all.sh'", f"echo >>{log}")
    subprocess.run(["/bin/sh", "-c", script, "x", "active"], check=True, timeout=10)
    assert log.read_text().split() == ["--from", "keepalived", "INSTANCE", "VI_Q", "MASTER", "110"]


def test_dr_with_ssl_get() -> None:
    cfg, text, _ = _convert("dr-ssl.conf")
    (svc,) = cfg.services
    assert (svc.forwarding, svc.scheduler, svc.persistence, svc.on_failure) == (
        "dr", "wrr", 600, "weight0")
    assert str(svc.sorry_server) == "198.51.100.250:443"
    c = svc.check
    assert (c.type, c.port, c.path, c.host, c.verify_tls, c.fall, c.interval, c.timeout) == (
        "https", 8443, "/status", "www.example.com", False, 4, 10.0, 4.0)
    assert tuple(c.expect_status) == (200, 201, 202, 203, 204, 301)
    assert [(str(r.address), r.weight) for r in svc.real_servers] == [
        ("198.51.100.21", 3), ("198.51.100.22", 1)]
    assert "digest" in text and "virtual_server fwmark 7" in text
    assert text.count("digest (") == 1  # the same note for both servers is written once


def test_misc_check_address_becomes_a_placeholder() -> None:
    cfg, text, _ = _convert("misc-check.conf")
    (svc,) = cfg.services
    assert svc.forwarding == "tunnel"
    assert svc.scheduler == "wlc" and "lb_algo twos" in text
    assert tuple(svc.check.command) == ("/usr/local/libexec/check_pg.sh", "{address}", "replica ok")
    assert (svc.check.timeout, svc.check.fall) == (3.0, 1)  # MISC_CHECK: retry 0 by default
    assert "misc_dynamic" in text


def test_virtual_server_group() -> None:
    cfg, text, _ = _convert("vs-group.conf")
    assert [(str(s.vip), s.port, s.protocol, s.scheduler) for s in cfg.services] == [
        ("203.0.113.40", 53, "udp", "sh"), ("203.0.113.41", 53, "udp", "sh"),
        ("203.0.113.42", 53, "udp", "sh"), ("203.0.113.50", 53, "udp", "sh")]
    assert all(len(s.real_servers) == 2 for s in cfg.services)
    assert cfg.services[0].name == "DNS-203.0.113.40-53-udp"
    assert "fwmark" in text
    assert "@{address}" in cfg.services[0].check.command[3]


def test_includes_with_globs_in_subdirectories() -> None:
    cfg, _, _ = _convert("includes/main.conf")
    assert [(str(s.vip), s.port, s.scheduler) for s in cfg.services] == [
        ("203.0.113.90", 80, "rr"), ("203.0.113.90", 25, "lc")]  # sorted glob order
    assert cfg.ha is not None and [str(p) for p in cfg.ha.peers] == ["192.0.2.12:5405"]
    assert cfg.ha.priority == 200


def test_macros_and_multiline_definition() -> None:
    cfg, _, _ = _convert("macros.conf")
    assert cfg.node_name == "macro-80"
    (svc,) = cfg.services
    assert (str(svc.vip), svc.port) == ("203.0.113.100", 80)
    assert [(str(r.address), r.weight) for r in svc.real_servers] == [
        ("198.51.100.101", 5), ("198.51.100.102", 1)]
    assert svc.check.timeout == 2.0


@pytest.mark.parametrize(("host", "name", "prio", "bind", "peer"), [
    ("director-a", "director-a", 150, "192.0.2.11:5405", "192.0.2.12:5405"),
    ("director-b", "director-b", 100, "192.0.2.12:5405", "192.0.2.11:5405"),
])
def test_host_conditional_lines(host: str, name: str, prio: int, bind: str, peer: str) -> None:
    cfg, _, _ = _convert("hosts.conf", host)
    assert cfg.node_name == name and cfg.ha is not None
    assert (cfg.ha.priority, str(cfg.ha.bind), [str(p) for p in cfg.ha.peers]) == (
        prio, bind, [peer])


def test_one_line_braces() -> None:
    cfg, _, _ = _convert("oneline.conf")
    assert cfg.ha is not None
    assert (cfg.ha.interval, cfg.ha.preempt, cfg.ha.priority) == (0.5, False, 120)
    (svc,) = cfg.services
    assert [(str(r.address), r.port) for r in svc.real_servers] == [
        ("198.51.100.61", 80), ("198.51.100.62", 8080)]
    assert svc.check.type == "tcp" and svc.check.timeout == 1.0


def test_quoted_strings() -> None:
    cfg, _, _ = _convert("quoted.conf")
    assert cfg.node_name == "quoted"
    assert tuple(cfg.services[0].check.command) == ("/usr/local/bin/check", "a b#c", "d")
    assert cfg.services[0].check.type == "exec" and cfg.services[0].check.fall == 1


def test_multicast_leaves_ha_commented_out() -> None:
    cfg, notes, doc = _convert("multicast.conf")
    assert cfg.ha is None and "ha" not in doc
    assert "peer director's address is unknown" in notes
    text, _ = import_keepalived(str(CORPUS / "good" / "multicast.conf"), "director-a")
    lines = text.splitlines()
    section = "\n".join(ln[2:] for ln in lines[lines.index("# ha:") :])
    ha = yaml.safe_load(section)["ha"]
    assert ha["priority"] == 254  # 255 (address owner) -> hacontrol's highest
    assert ha["vips"] == [{"address": "203.0.113.80", "interface": "eth0"},
                          {"address": "203.0.113.81/24", "interface": "eth1"}]


def test_unknown_keywords_are_notes_not_errors() -> None:
    _, text, _ = _convert("unknown-keyword.conf")
    assert "global_defs unknown_thing (" in text and "not_a_block (" in text


def test_cli_writes_output_and_check_accepts_it(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    key = tmp_path / "ha.key"
    key.write_text("k" * 32)
    dest = tmp_path / "x.yaml"
    src = str(CORPUS / "good" / "seed-nat-pair.conf")
    rc = main(["import-keepalived", src, "-o", str(dest), "--host", "director-a",
               "--secret-file", str(key)], out, err)
    assert rc == 0 and out.getvalue() == "" and "not carried over" in err.getvalue()
    assert load(str(dest)).ha is not None  # with the file checks: the key exists
    out = io.StringIO()
    assert main(["check", "-c", str(dest)], out, io.StringIO()) == 0
    assert out.getvalue().startswith("ok: 2 services, 6 real servers")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".import-")]


def test_check_on_a_keepalived_conf_says_how_to_convert_it() -> None:
    src = str(CORPUS / "good" / "seed-nat-pair.conf")
    with pytest.raises(ConfigError) as ei:
        load(src)
    (issue,) = ei.value.errors
    assert (issue.line, issue.field) == (6, "<root>")
    assert f"hacontrol import-keepalived {src}" in issue.reason
    err = io.StringIO()
    assert main(["check", "-c", src], io.StringIO(), err) == 1
    assert "this looks like a keepalived.conf (global_defs)" in err.getvalue()


@pytest.mark.parametrize("text", [
    "node: {name: a}\n", "virtual_server: 1\n", "# global_defs {\nnode: {name: a}\n",
    "include: x\n",
])
def test_the_keepalived_hint_never_fires_on_yaml(text: str) -> None:
    from hacontrol.config.foreign import keepalived_hint

    assert keepalived_hint(text, "x.yaml") is None
