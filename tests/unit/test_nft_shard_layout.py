"""Which table holds a service on the nftables plane (``hacontrol.dataplane.nft_shards``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hacontrol.dataplane.nft_shards import COUNTS, PER_SHARD, Layout, shard_index, target_count
from hacontrol.dataplane.table import ServiceKey


@pytest.mark.parametrize(
    ("services", "current", "want"),
    [
        (0, None, 1),
        (64, None, 1),
        (65, None, 2),
        (1000, None, 16),
        (2284, None, 16),  # never more than 16
        (10_000, 16, 16),
        (65, 1, 2),  # outgrown: grows
        (129, 2, 4),
        (64, 2, 2),  # shrinking a little keeps the count (no flapping at a boundary)
        (60, 2, 2),  # twice what is needed: kept
        (60, 4, 1),  # four times: shrinks to what is needed
        (300, 16, 16),  # 300 want 8: 16 is twice that, kept
        (200, 16, 4),  # 200 want 4: 16 is four times, shrinks
        (100, 3, 2),  # not a count of ours (a hand-made table): what is needed
    ],
)
def test_target_count(services: int, current: int | None, want: int) -> None:
    assert target_count(services, current) == want


def test_target_count_is_a_power_of_two_enough_for_the_services() -> None:
    for n in range(0, 3000, 7):
        c = target_count(n)
        assert c in COUNTS and (c * PER_SHARD >= n or c == COUNTS[-1])
        assert c == 1 or (c // 2) * PER_SHARD < n  # and not more than needed
        assert target_count(n, c) == c  # a count it chose is kept


def test_one_table_keeps_everything_in_the_main_one() -> None:
    key = ServiceKey("tcp", "192.0.2.10", 80)
    assert Layout("hc").shard(key) == "hc"
    assert Layout("hc", 16).shard(key) == f"hc_{shard_index(key, 16)}of16"


def test_names_say_their_count_and_only_ours_parse() -> None:
    lay = Layout("hacontrol", 4)
    assert lay.parse("hacontrol") == 1
    assert lay.parse("hacontrol_3of4") == 4 and lay.parse("hacontrol_15of16") == 16
    for other in ("hacontrol_4of4", "hacontrol_0of3", "hacontrol_0of32", "hacontrol_hb",
                  "hacontrol_handoff", "hacontrol_nat", "xhacontrol_0of2", "hacontrol_0of2x"):
        assert lay.parse(other) is None, other  # fmt: skip
    names = lay.every_name()
    assert names[0] == "hacontrol" and len(names) == len(set(names)) == sum(COUNTS)
    assert all(lay.parse(n) is not None for n in names)
    assert Layout("a.b").parse("aXb_0of2") is None  # the main name is not a pattern


def test_the_shard_of_a_key_is_the_same_in_another_process() -> None:
    """crc32, not Python's salted hash: both directors and every child agree."""
    keys = [ServiceKey("tcp", f"198.51.100.{i}", 80 + i) for i in range(40)]
    here = [shard_index(k, 16) for k in keys]
    code = (
        "from hacontrol.dataplane.nft_shards import shard_index\n"
        "from hacontrol.dataplane.table import ServiceKey\n"
        "print([shard_index(ServiceKey('tcp', f'198.51.100.{i}', 80 + i), 16) for i in range(40)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)
    assert len(set(here)) > 8  # spread, not all in one table
