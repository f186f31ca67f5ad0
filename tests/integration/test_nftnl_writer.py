"""The nftables plane's per-event changes as our own netlink batches, on the real kernel (root).

One network namespace, no traffic (test_nft_incremental sends traffic through the same path).
Two planes in it: ``hcnl`` sends its deltas through ``hacontrol.dataplane.nftnl`` (our own
nf_tables netlink batch), ``hcjs`` the same deltas as nft JSON through libnftables (the path
before). A delta that adds or deletes a service table (``<name>_<i>of<n>``, its first or last
service) goes through nft on ``hcnl`` too (its binary, with service tables): each step is
checked to take exactly its path.
For rr, wrr, sh and fo services, IPv4 and IPv6, going to and from no destinations, weight
changes, whole services added and deleted (in a service table that stays, and with their table),
and seeded random sequences, after every step: (a) the netlink-applied table read back
(``snapshot``: the listing parsed, re-rendered and compared) is exactly the desired table,
nothing ``altered:``; (b) the listing of all the tables of each plane (main and service tables,
``tests/integration/nftlist``) is the same once handles are dropped and the names made neutral.
The notification watch sees the netlink and nft commits as ours and a foreign flush of
the main or a service table as foreign; a kernel refusal names the refused object; without a
socket nft does the work.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import diff
from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.nft_render import chain_name
from hacontrol.dataplane.nft_shards import shard_index
from hacontrol.dataplane.nftnl import NftNetlink
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from hacontrol.dataplane.table import TableService as TS
from hacontrol.lab.netns import NetnsLab, Ns
from tests.integration import nftlist

pytestmark = pytest.mark.root
TIMEOUT = 30.0
SHARDS = 16  # service tables, fixed (a handful of services would all be in the main table)

A4 = ServiceKey("tcp", "192.0.2.10", 80)
B4 = ServiceKey("tcp", "192.0.2.10", 443)
C4 = ServiceKey("udp", "192.0.2.11", 53)
A6 = ServiceKey("tcp", "2001:db8::10", 80)
B6 = ServiceKey("udp", "2001:db8::10", 53)
D4 = ServiceKey("tcp", "192.0.2.10", 8007)  # in A4's service table
R4 = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
R6 = ["2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3"]


def svc(sched: str, addrs: list[str], weights: list[int], port: int = 8080) -> TS:
    return TS(
        ServiceSpec(sched),
        {DestKey(a, port): DestSpec(w) for a, w in zip(addrs, weights, strict=True)},
    )


STEPS: list[Table] = [
    {  # the first table (a whole-table load)
        A4: svc("rr", R4[:2], [1, 1]), B4: svc("wrr", R4, [1, 2, 3]),
        A6: svc("sh", R6[:2], [1, 1]), B6: svc("fo", R6, [1, 5, 3]),
    },
    {  # weight changes: wrr reweighted, sh reweighted, fo's primary moves
        A4: svc("rr", R4[:2], [1, 1]), B4: svc("wrr", R4, [3, 1, 1]),
        A6: svc("sh", R6[:2], [2, 1]), B6: svc("fo", R6, [9, 5, 3]),
    },
    {  # to no destinations: weight 0 everywhere, and no destination at all
        A4: svc("rr", R4[:2], [0, 0]), B4: svc("wrr", R4, [3, 1, 1]),
        A6: svc("sh", [], []), B6: svc("fo", R6, [9, 5, 3]),
    },
    {  # from no destinations
        A4: svc("rr", R4[:2], [1, 0]), B4: svc("wrr", R4, [3, 1, 1]),
        A6: svc("sh", R6, [1, 1, 1]), B6: svc("fo", R6, [9, 5, 3]),
    },
    {  # a service added to a service table that holds one (no table added)
        A4: svc("rr", R4[:2], [1, 0]), B4: svc("wrr", R4, [3, 1, 1]), D4: svc("rr", R4, [1, 1, 1]),
        A6: svc("sh", R6, [1, 1, 1]), B6: svc("fo", R6, [9, 5, 3]),
    },
    {  # and deleted from it (the table stays, A4's)
        A4: svc("rr", R4[:2], [1, 0]), B4: svc("wrr", R4, [3, 1, 1]),
        A6: svc("sh", R6, [1, 1, 1]), B6: svc("fo", R6, [9, 5, 3]),
    },
    {  # whole services added and deleted (addresses leave and enter the masquerade sets)
        A4: svc("rr", R4[:2], [1, 0]), C4: svc("sh", R4[2:], [1], 53),
        A6: svc("sh", R6, [1, 1, 1]), B6: svc("rr", ["2001:db8:1::9"], [1], 53),
    },
    {  # schedulers change, one service keeps only weight-0 destinations
        A4: svc("wrr", R4[:2], [2, 1]), C4: svc("fo", R4[1:], [1, 1], 53),
        A6: svc("rr", R6, [0, 0, 0]),
    },
    {A6: svc("wrr", R6[:1], [1])},  # all but one deleted
]  # fmt: skip


@pytest.fixture(scope="module")
def ns() -> Iterator[Ns]:
    with NetnsLab() as lab:
        yield lab.add("nl")


def listing(ns: Ns, name: str) -> list[str]:
    """All of our tables, main and service tables (``T``, ``T_<i>of<n>``), in a normal form."""
    return nftlist.listing(ns, name)


async def step(plane: NftDataplane, want: Table) -> None:
    now = await plane.snapshot(set())
    await plane.apply(want, diff(want, now, set(now)))


async def walk(ns: Ns, tables: list[Table], shards: int = SHARDS) -> tuple[int, int]:
    """Both planes through ``tables``; a step that adds or deletes a service table (its first
    service or its last) goes through nft (the netlink encoder writes no tables), every
    other step as our netlink batch: exactly that split, step by step. Returns the two counts
    (netlink, nft)."""
    nl = NftDataplane("hcnl", netns=ns.name, shards=shards)
    js = NftDataplane("hcjs", netns=ns.name, netlink=False, shards=shards)
    by_netlink = by_lib = 0
    try:
        await nl.replace(tables[0])
        await js.replace(tables[0])
        for n, (prev, want) in enumerate(itertools.pairwise(tables), 1):
            await step(nl, want)
            await step(js, want)
            if nl.shards(prev) != nl.shards(want):
                by_lib += 1
            else:
                by_netlink += 1
            sent = {"netlink": by_netlink, "fallback": 0}
            assert nl.netlink is not None and nl.netlink.sent == sent, f"step {n}"
            # whole tables, and service tables coming and going, through nft: with service
            # tables its binary (libnftables would keep its cache of them all)
            way = "binary" if shards > 1 else "lib"
            assert nl.exec.sent[way] == sum(nl.exec.sent.values()) == 1 + by_lib, f"step {n}"
            assert nl.rewrites == js.rewrites == 1  # deltas only, both ways
            assert sum(js.exec.sent.values()) == n + 1 and js.exec.sent[way] >= 1 + by_lib
            assert await nl.snapshot(set()) == want, f"step {n}"  # (a): nothing altered
            assert listing(ns, "hcnl") == listing(ns, "hcjs"), f"step {n}"  # (b)
            tables = ["hcnl", *sorted(nl.shards(want) - {"hcnl"})]
            assert nftlist.present(ns, "hcnl") == tables, f"step {n}"
    finally:
        for plane in (nl, js):
            await plane.remove()
            await plane.close()
    assert listing(ns, "hcnl") == listing(ns, "hcjs") == []
    return by_netlink, by_lib


@pytest.mark.parametrize(("shards", "split"), [(16, (5, 3)), (1, (8, 0))])
async def test_each_kind_of_change_leaves_what_the_json_path_leaves(
    ns: Ns, shards: int, split: tuple[int, int]
) -> None:
    """With 16 service tables the first five steps keep the set of service tables (netlink);
    with one (up to 64 services) the main table holds everything: every step is netlink."""
    assert await walk(ns, STEPS, shards) == split


def random_key(rnd: random.Random, vip: str) -> ServiceKey:
    return ServiceKey(rnd.choice(["tcp", "udp"]), vip, rnd.randrange(1000, 1008))


def random_table(rnd: random.Random, keys: list[ServiceKey] | None = None) -> Table:
    """Random services, or new random contents for the services ``keys``."""
    if keys is None:
        keys = [
            ServiceKey(rnd.choice(["tcp", "udp"]), vip, port)
            for vip in ("192.0.2.20", "2001:db8::20")
            for port in rnd.sample(range(1000, 1008), rnd.randint(1, 5))
        ]
    out: Table = {}
    for key in keys:
        addrs = [*R4, "198.51.100.7"] if "." in key.address else [*R6, "2001:db8:1::7"]
        picked = rnd.sample(addrs, rnd.randint(0, 4))
        dests = {DestKey(a, rnd.choice([80, 8080])): DestSpec(rnd.randint(0, 4)) for a in picked}
        out[key] = TS(ServiceSpec(rnd.choice(["rr", "wrr", "sh", "fo"])), dests)
    return out


def same_tables(rnd: random.Random, prev: Table) -> list[ServiceKey]:
    """The services of ``prev``, one added and one deleted where that leaves every service
    table (a service added to a table that holds one, one deleted from a table that keeps one)."""
    keys = list(prev)
    used = [shard_index(k, SHARDS) for k in keys]
    shared = [k for k in keys if used.count(shard_index(k, SHARDS)) > 1]
    if shared:
        keys.remove(rnd.choice(shared))
    for _ in range(100):  # bounded: a free key in a used table, most draws find one
        new = random_key(rnd, rnd.choice(["192.0.2.20", "2001:db8::20"]))
        if new not in keys and shard_index(new, SHARDS) in used:
            keys.append(new)
            break
    return keys


@pytest.mark.parametrize("seed", [11, 12])
async def test_random_changes_leave_what_the_json_path_leaves(ns: Ns, seed: int) -> None:
    """New services every other step (service tables come and go: nft), in between
    the same service tables with services added, deleted and changed (our netlink batches)."""
    rnd = random.Random(seed)
    tables = [random_table(rnd)]
    for n in range(1, 12):
        tables.append(random_table(rnd, None if n % 2 == 0 else same_tables(rnd, tables[-1])))
    by_netlink, by_lib = await walk(ns, tables)
    assert by_netlink >= 5 and by_lib > 0  # both paths, on random changes


async def test_the_netlink_commits_are_ours_and_a_foreign_one_is_not(ns: Ns) -> None:
    seen: list[tuple[str, int]] = []
    got = asyncio.Event()

    def changed(reason: str, count: int) -> None:
        seen.append((reason, count))
        got.set()

    plane = NftDataplane("hcnl", netns=ns.name, shards=SHARDS)
    try:
        await plane.replace(STEPS[0])
        plane.watch(changed)
        assert plane.watcher is not None
        async with asyncio.timeout(TIMEOUT):
            await plane.watcher.watching.wait()
        for want in STEPS[1:]:
            await step(plane, want)
        # ours both ways: netlink batches, and nft's binary where a service table came or went
        same = sum(plane.shards(a) == plane.shards(b) for a, b in itertools.pairwise(STEPS))
        assert plane.netlink is not None and plane.netlink.sent["netlink"] == same
        assert plane.exec.sent == {"lib": 0, "binary": 1 + len(STEPS) - 1 - same}
        # notifications come in commit order: once the foreign flush is seen, ours were too
        await asyncio.to_thread(ns.run, "nft", "flush", "table", "inet", "hcnl")
        async with asyncio.timeout(TIMEOUT):
            await got.wait()
        assert len(seen) == 1 and seen[0][1] == 1 and "by nft" in seen[0][0], seen
        tracker = plane.watcher.tracker
        assert tracker.own_seen >= len(STEPS) - 1 and tracker.foreign_seen == 1
        # a service table is ours too
        got.clear()
        (shard,) = plane.shards(STEPS[-1])
        await asyncio.to_thread(ns.run, "nft", "flush", "table", "inet", shard)
        async with asyncio.timeout(TIMEOUT):
            await got.wait()
        assert len(seen) == 2 and seen[1][1] == 1 and "by nft" in seen[1][0], seen
        assert tracker.foreign_seen == 2
    finally:
        await plane.remove()
        await plane.close()


async def test_a_refusal_names_the_object_and_the_next_pass_repairs(ns: Ns) -> None:
    plane = NftDataplane("hcnl", netns=ns.name, shards=SHARDS)
    try:
        await plane.replace(STEPS[0])
        await plane.snapshot(set())
        # someone removes the service's verdict element and chain behind our back
        elem = "{ tcp . 192.0.2.10 . 443 }"
        ns.run("nft", "delete", "element", "inet", plane.shard(B4), "svc4", elem)
        ns.run("nft", "delete", "chain", "inet", plane.shard(B4), chain_name(B4))
        with pytest.raises(DataplaneError) as e:
            # from the table as the plane last wrote it: B4's chain is flushed for new weights
            await plane.apply(STEPS[1], diff(STEPS[1], STEPS[0], set(STEPS[0])))
        text = str(e.value)
        assert "netlink batch refused" in text and chain_name(B4) in text
        assert "No such file or directory" in text
        assert plane.netlink is not None and plane.netlink.mode == "netlink"
        await step(plane, STEPS[1])  # read again: B4 reads back altered, the table is rewritten
        assert await plane.snapshot(set()) == STEPS[1]
    finally:
        await plane.remove()
        await plane.close()


async def test_without_a_socket_nft_does_the_work_logged_once(ns: Ns) -> None:
    plane = NftDataplane("hcnl", netns=ns.name, shards=SHARDS)
    plane.netlink = NftNetlink(netns="hc-no-such-netns", limit=5.0)
    try:
        await plane.replace(STEPS[0])
        with capture_logs() as logs:
            for want in STEPS[1:3]:
                await step(plane, want)
                assert await plane.snapshot(set()) == want
        falls = [e for e in logs if e["event"] == "dataplane.nftnl_fallback"]
        assert len(falls) == 1 and falls[0]["kind"] == "socket"
        assert plane.netlink.mode == "off" and sum(plane.exec.sent.values()) == 3  # load + 2
    finally:
        await plane.remove()
        await plane.close()
