"""The real ``hacontrol run`` sets up the director's host side (root, namespaces, nftables).

A lone director on the nftables plane (the topology of ``test_daemon_nft``) with a ``nat.snat``
rule for the real servers' segment: the status names the plane and why it was chosen and lists
the sysctls the service needs; a real server's own connection to a listener in the client's
namespace leaves with the VIP (not the director's address, which the plane's masquerade would
give); a flushed SNAT table is put back by the periodic upkeep; a reload that drops the ``nat``
section removes the table and the source is the director's own address again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
import yaml
from test_daemon_nft import VIP, Scene, config, scene, wait_until

from hacontrol.api.app import openapi_text
from hacontrol.lab.netns import wait_tcp

pytestmark = pytest.mark.root

__all__ = ["scene"]  # the fixture, imported for this module's tests

OUTSIDE = "198.51.100.2"  # the client's address: "the outside" for the real servers
WHOAMI = f"{OUTSIDE}:9000"
NAT = f"""
nat:
  table: {{table}}
  snat:
    - {{{{source: 192.0.2.0/24, to: {VIP}}}}}
"""


def write(s: Scene, nat_table: str | None) -> None:
    text = config(s.tmp, s.table, {"rs1": 1, "rs2": 1})
    text = text.replace("resync_interval: 5s", "resync_interval: 1s")  # a quick upkeep
    if nat_table is not None:
        text += NAT.format(table=nat_table)
    s.cfg.write_text(text)


def source_seen(s: Scene) -> str:
    r = s.rs["rs1"].run(sys.executable, "-m", "hacontrol.lab.whoami", "--ask", WHOAMI, check=False)
    assert r.returncode == 0, f"rs1 could not reach the outside: {r.stderr}"
    return r.stdout.strip()


def nat_table_exists(s: Scene, table: str) -> bool:
    return s.director.run("nft", "list", "table", "inet", table, check=False).returncode == 0


def test_lone_director_host_side(scene: Scene) -> None:
    s = scene
    nat_table = f"{s.table}_nat"
    s.client.popen(
        sys.executable, "-m", "hacontrol.lab.whoami", "--listen", WHOAMI,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_tcp(s.rs["rs1"], OUTSIDE, 9000)
    write(s, nat_table)
    with s.log.open("w") as log:
        s.daemon = s.director.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg), stdout=log, stderr=log
        )
    try:
        doc: dict[str, Any] = wait_until(
            lambda: (st := s.status()) and st.get("host", {}).get("snat") and st, "status"
        )
        spec = yaml.safe_load(openapi_text())
        schema = {"$ref": "#/components/schemas/Status", "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(doc)  # the live document, as documented
        host = doc["host"]
        assert host["plane"] == {"kind": "nftables", "reason": host["plane"]["reason"]}
        assert "nftables" in host["plane"]["reason"]
        assert {c["key"] for c in host["sysctls"]} >= {"net.ipv4.ip_forward"}
        assert all(c["ok"] for c in host["sysctls"] if c["key"] == "net.ipv4.ip_forward")
        assert host["snat"]["installed"] and host["snat"]["active"]
        assert host["snat"]["reason"] == "single director"
        wait_until(lambda: all(r["health"] == "up" for r in s.servers().values()), "servers up")

        assert source_seen(s) == VIP  # SNAT to the VIP, ahead of the plane's masquerade

        s.director.run("nft", "delete", "table", "inet", nat_table)  # a hand edit
        assert source_seen(s) == "198.51.100.1"  # the plane's masquerade alone
        wait_until(lambda: nat_table_exists(s, nat_table), "the SNAT table repaired")
        assert source_seen(s) == VIP
        assert [e for e in s.events("nat.snat_repair") if e.get("reason") == "drift"]

        write(s, None)  # the nat section dropped: the table goes
        s.daemon.send_signal(signal.SIGHUP)
        wait_until(lambda: not nat_table_exists(s, nat_table), "the SNAT table removed")
        assert source_seen(s) == "198.51.100.1"
        doc = wait_until(lambda: (st := s.status()) and st["host"]["snat"] is None and st, "st")
        assert doc["services"][0]["name"] == "web"
    finally:
        s.daemon.send_signal(signal.SIGTERM)
        assert s.daemon.wait(timeout=15) == 0
        s.director.run("nft", "delete", "table", "inet", nat_table, check=False)
