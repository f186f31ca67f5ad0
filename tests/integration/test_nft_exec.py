"""The nftables plane's batches through libnftables in the daemon, and the nft binary fallback.

Root, one network namespace, no traffic (test_nft_incremental covers traffic). The in-process
path must write into the plane's own namespace (the worker thread entered it), leave the same
kernel listing as the binary for a seeded sequence of changes, report nft's error text, and a
plane that cannot load the library must keep working through the binary.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from collections.abc import Iterator

import pytest
from test_nft_incremental import _random_table

from hacontrol.dataplane import nft_exec
from hacontrol.dataplane.diff import diff
from hacontrol.dataplane.nft import NftDataplane
from hacontrol.lab.netns import NetnsLab, Ns
from tests.integration import nftlist

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ns() -> Iterator[Ns]:
    with NetnsLab() as lab:
        yield lab.add("nx")


def _host_has(name: str) -> bool:
    """Any table of ours (main or service table) in the host's namespace."""
    r = subprocess.run(["nft", "-j", "list", "tables", "inet"], capture_output=True, check=False)
    items = json.loads(r.stdout)["nftables"] if r.returncode == 0 and r.stdout.strip() else []
    return any(nftlist.is_ours(i["table"]["name"], name) for i in items if "table" in i)


async def test_lib_and_binary_leave_the_same_table_in_the_plane_namespace(ns: Ns) -> None:
    rnd = random.Random(7)
    lib = NftDataplane("hcexec", netns=ns.name, netlink=False)  # deltas through the library too
    binary = NftDataplane("hcexec", netns=ns.name, in_process=False)
    try:
        first = _random_table(rnd)
        await lib.replace(first)
        assert lib.exec.mode == "lib" and binary.exec.mode == "binary"
        assert not _host_has("hcexec")  # the worker thread entered the namespace
        wants = [first, *(_random_table(rnd) for _ in range(6))]
        for prev, want in itertools.pairwise(wants):
            now = await lib.snapshot(set())
            assert now == prev
            await lib.apply(want, diff(want, now, set(now)))
            by_lib = nftlist.listing(ns, "hcexec")
            await binary.replace(want)  # the same table through the nft binary
            assert nftlist.listing(ns, "hcexec") == by_lib
        assert lib.commands > 0 and lib.rewrites <= len(wants)
        assert binary.exec.sent["lib"] == 0 and lib.exec.sent["binary"] == 0
    finally:
        await lib.remove()
        await lib.close()
        await binary.close()
    assert nftlist.listing(ns, "hcexec") == []


async def test_an_error_comes_back_with_nfts_message(ns: Ns) -> None:
    plane = NftDataplane("hcexecerr", netns=ns.name)
    try:
        bad = {"nftables": [{"add": {"chain": {"family": "inet", "table": "nosuch", "name": "c"}}}]}
        rc, _, err = await plane.exec.batch(json.dumps(bad).encode())
        assert rc != 0 and "No such file or directory" in err
        assert plane.exec.mode == "lib"  # an nft error is not a reason to leave the library
    finally:
        await plane.close()


async def test_without_the_library_the_binary_does_the_work(
    ns: Ns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nft_exec, "LIBRARY", "libnftables-hacontrol-missing.so.0")
    plane = NftDataplane("hcexecfb", netns=ns.name)
    rnd = random.Random(3)
    try:
        table = _random_table(rnd)
        await plane.replace(table)
        assert plane.exec.mode == "binary"
        assert await plane.snapshot(set()) == table
    finally:
        await plane.remove()
        await plane.close()
    assert nftlist.listing(ns, "hcexecfb") == []


async def test_a_big_batch_goes_to_the_binary(ns: Ns) -> None:
    """A whole table parsed in the daemon would leave its peak in the daemon's heap."""
    plane = NftDataplane("hcexecbig", netns=ns.name, netlink=False)
    rnd = random.Random(5)
    try:
        plane.exec.lib_max = 200  # bytes: every whole-table batch is bigger
        first, second = _random_table(rnd), _random_table(rnd)
        await plane.replace(first)
        assert plane.exec.sent == {"lib": 0, "binary": 1}
        plane.exec.lib_max = 1 << 20
        now = await plane.snapshot(set())
        await plane.apply(second, diff(second, now, set(now)))
        assert plane.exec.sent == {"lib": 1, "binary": 1}
        assert await plane.snapshot(set()) == second
    finally:
        await plane.remove()
        await plane.close()
