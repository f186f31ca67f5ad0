"""Reading our nftables table back, whatever form nft printed it in.

nft prints a protocol by name only when /etc/protocols names it (a minimal Debian root or a
container has no such file: then ``6``), by number with ``-p``, and a port by name only with
``-S``. The golden listings under ``golden/nft/`` are what nft 1.0.6 printed for our tables (the
main one and its service tables: ``list ruleset inet``) in each form, on a real kernel:

* ``named.json``: ``nft -j list ruleset inet`` on a host with /etc/protocols (``"tcp"``),
* ``numeric.json``: ``nft -j -p list ruleset inet`` (``6``, what the dataplane asks for, and what
  plain ``nft -j`` prints on a host without /etc/protocols),
* ``services.json``: ``nft -j -S list ruleset inet`` (ports as service names: ``"http"``),
* ``sharded.json``: the numeric form of the same table spread over 4 service tables (the layout
  past 64 services, made here with a count of 4 for 5 services),
* ``single-table.json``: the numeric form, as nft listed it before the service tables existed
  (``list table``), kept to test the upgrade.

Regenerate them (root, nft installed; only when the rendering changes on purpose):
``python3 tests/unit/test_nft_readback.py --regen``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from hacontrol.dataplane.nft_readback import ALTERED, read_port, read_proto
from hacontrol.dataplane.nft_render import NftRenderer, chain_name
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)

GOLDEN = Path(__file__).parent / "golden" / "nft"
TABLE_NAME = "hcgolden"
FORMS = {"named": [], "numeric": ["-p"], "services": ["-S"]}


def _svc(sched: str, dests: dict[tuple[str, int], int]) -> TableService:
    return TableService(
        ServiceSpec(sched), {DestKey(a, p): DestSpec(w) for (a, p), w in dests.items()}
    )


TABLE: Table = {
    ServiceKey("tcp", "198.51.100.10", 80): _svc(
        "wrr", {("192.0.2.11", 8080): 2, ("192.0.2.12", 80): 1, ("192.0.2.13", 80): 0}
    ),
    ServiceKey("udp", "198.51.100.10", 53): _svc("rr", {("192.0.2.11", 53): 1}),
    ServiceKey("tcp", "198.51.100.11", 443): TableService(ServiceSpec("rr"), {}),  # no dest
    ServiceKey("tcp", "2001:db8:1::10", 443): _svc("sh", {("2001:db8:2::11", 443): 1}),
    ServiceKey("udp", "2001:db8:1::10", 53): _svc("lc", {("2001:db8:2::12", 53): 0}),
}


def _golden(form: str) -> dict[str, Any]:
    return dict(json.loads((GOLDEN / f"{form}.json").read_text()))


def _elements(doc: dict[str, Any]) -> list[list[Any]]:
    return [
        e[0]["concat"]
        for item in doc["nftables"]
        if "map" in item
        for e in item["map"].get("elem", [])
    ]


def test_golden_forms_really_differ() -> None:
    """The three listings are not the same text: each exercises its own form."""
    protos = {f: {c[0] for c in _elements(_golden(f))} for f in FORMS}
    assert protos == {"named": {"tcp", "udp"}, "numeric": {6, 17}, "services": {"tcp", "udp"}}
    ports = {c[2] for c in _elements(_golden("services"))}
    assert ports == {"http", "domain", "https"}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_reads_back_to_the_rendered_table(form: str) -> None:
    if form == "services":
        try:
            socket.getservbyname("http")
        except OSError:
            pytest.skip("no services database on this host: nft could not print names either")
    assert NftRenderer(TABLE_NAME).parse(_golden(form)) == TABLE


def test_numeric_listing_needs_no_name_database() -> None:
    """The form nft prints without /etc/protocols and /etc/services is read without any lookup."""
    renderer = NftRenderer(TABLE_NAME)
    doc = _golden("numeric")
    real = socket.getservbyname
    try:

        def refuse(*args: Any) -> int:
            raise AssertionError(f"looked up a service name {args}")

        socket.getservbyname = refuse  # type: ignore[assignment]
        assert renderer.parse(doc) == TABLE
    finally:
        socket.getservbyname = real


def test_hand_edit_still_detected_in_numeric_form() -> None:
    """Accepting numbers does not make the parser blind: an edited weight element or rule still
    reads back altered."""
    renderer = NftRenderer(TABLE_NAME)
    doc = _golden("numeric")
    for item in doc["nftables"]:
        rule = item.get("rule")
        if rule and rule["chain"] == chain_name(ServiceKey("tcp", "198.51.100.10", 80)):
            rule["expr"][1]["match"]["right"] = 81  # the port of the rule, edited by hand
    got = renderer.parse(doc)
    key = ServiceKey("tcp", "198.51.100.10", 80)
    assert got[key].spec.scheduler == ALTERED + "wrr"
    assert all(not s.spec.scheduler.startswith(ALTERED) for k, s in got.items() if k != key)


def test_the_table_of_before_the_service_tables_is_adopted_as_it_is() -> None:
    """A director upgraded from before the service tables (``single-table.json``: what nft
    printed for TABLE then) reads its table back unaltered: up to 64 services the layout is the
    same, so the first pass changes nothing."""
    doc = json.loads((GOLDEN / "single-table.json").read_text())
    assert {i["table"]["name"] for i in doc["nftables"] if "table" in i} == {TABLE_NAME}
    assert NftRenderer(TABLE_NAME).parse_layout(doc) == (TABLE, 1)


def test_service_tables_read_back_with_their_count() -> None:
    """Spread over 4 service tables: read back whole, with the count, by a renderer of any
    count; one service's chain moved to another of our tables by hand reads back altered."""
    doc = _golden("sharded")
    names = {i["table"]["name"] for i in doc["nftables"] if "table" in i}
    assert TABLE_NAME in names and len(names) > 2
    assert all(n == TABLE_NAME or n.endswith("of4") for n in names)
    assert NftRenderer(TABLE_NAME).parse_layout(doc) == (TABLE, 4)
    assert NftRenderer(TABLE_NAME, 16).parse_layout(doc) == (TABLE, 4)
    key = ServiceKey("tcp", "198.51.100.10", 80)
    home = NftRenderer(TABLE_NAME, 4).shard(key)
    other = next(n for n in sorted(names) if n not in (home, TABLE_NAME))
    for item in doc["nftables"]:
        chain, rule = item.get("chain"), item.get("rule")
        if chain and chain["table"] == home and chain["name"] == chain_name(key):
            chain["table"] = other
        if rule and rule["table"] == home and rule["chain"] == chain_name(key):
            rule["table"] = other
    got = NftRenderer(TABLE_NAME).parse(doc)
    assert got[key].spec.scheduler.startswith(ALTERED)


def test_a_foreign_table_in_the_listing_is_not_ours() -> None:
    """The listing is of every inet table: another one's objects, even named like ours, are
    skipped; a stray service table of ours that should not exist re-renders everything."""
    renderer = NftRenderer(TABLE_NAME)
    doc = _golden("numeric")
    stranger = "other"
    extra = [
        {"table": {"family": "inet", "name": stranger, "handle": 99}},
        {"chain": {"family": "inet", "table": stranger, "name": "dnat_pre", "handle": 1}},
        {"set": {"family": "inet", "table": stranger, "name": "svc4", "type": "ipv4_addr",
                 "handle": 2, "elem": ["192.0.2.1"]}},
    ]  # fmt: skip
    doc["nftables"] += extra
    assert renderer.parse(doc) == TABLE
    unused = f"{TABLE_NAME}_0of2"  # a name of ours, of another layout
    doc["nftables"].append({"table": {"family": "inet", "name": unused, "handle": 100}})
    assert all(s.spec.scheduler.startswith(ALTERED) for s in renderer.parse(doc).values())


def test_unknown_protocol_number_marks_the_table_for_rerender() -> None:
    renderer = NftRenderer(TABLE_NAME)
    doc = _golden("numeric")
    for item in doc["nftables"]:
        if item.get("map", {}).get("name") == "weights4":
            item["map"]["elem"][0][0]["concat"][0] = 132  # sctp: no service of ours
    assert {s.spec.scheduler[: len(ALTERED)] for s in renderer.parse(doc).values()} == {ALTERED}


@pytest.mark.parametrize(
    ("value", "want"),
    [("tcp", "tcp"), ("udp", "udp"), (6, "tcp"), (17, "udp"), ("6", "tcp"), ("17", "udp")],
)
def test_read_proto(value: object, want: str) -> None:
    assert read_proto(value) == want


@pytest.mark.parametrize("value", ["sctp", 132, "132", -6, True, None, "", "6 ", 6.0])
def test_read_proto_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="not the protocol of a service"):
        read_proto(value)


@pytest.mark.parametrize(("value", "want"), [(80, 80), ("8080", 8080), (0, 0), (65535, 65535)])
def test_read_port(value: object, want: int) -> None:
    assert read_port(value) == want


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (65536, "out of range"),
        (-1, "out of range"),
        ("no-such-service-name", "unknown service name"),
        (True, "not a port"),
        (None, "not a port"),
        ("", "not a port"),
        ({"set": [80]}, "not a port"),
    ],
)
def test_read_port_refuses(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        read_port(value)


def _regen() -> None:
    """Apply TABLE in a fresh network namespace and store each listing form."""
    for count, forms in ((1, FORMS), (4, {"sharded": ["-p"]})):
        _regen_one(NftRenderer(TABLE_NAME, count), forms)


def _regen_one(renderer: NftRenderer, forms: dict[str, list[str]]) -> None:
    ns = f"hcgold-{uuid.uuid4().hex[:8]}"
    batch = json.dumps(renderer.render(TABLE))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        nft = ["ip", "netns", "exec", ns, "nft"]
        subprocess.run([*nft, "-j", "-f", "-"], input=batch, text=True, check=True)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for form, opts in forms.items():
            out = subprocess.run(
                [*nft, "-j", *opts, "list", "ruleset", "inet"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            doc = json.loads(out)
            (GOLDEN / f"{form}.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"wrote {GOLDEN / f'{form}.json'}")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__" and sys.argv[1:] == ["--regen"]:
    _regen()
