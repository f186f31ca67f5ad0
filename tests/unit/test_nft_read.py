"""The nftables table reader's wire form: a table survives the trip through marshal as rows,
and a reader that cannot run nft answers an error record instead of raising."""

from __future__ import annotations

import asyncio

import pytest

from hacontrol.dataplane import nft_read
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService


def test_rows_round_trip_through_the_frames_in_slices() -> None:
    table = {
        ServiceKey("tcp", f"198.51.100.{1 + i // 250}", 1000 + i % 250): TableService(
            ServiceSpec("altered:wrr" if i == 3 else "wrr", 60 if i % 2 else 0),
            {DestKey(f"192.0.2.{j}", 8080): DestSpec(j % 3, "nat") for j in range(1, 5)},
        )
        for i in range(nft_read.SLICE * 2 + 7)
    }
    table[ServiceKey("udp", "2001:db8::1", 53)] = TableService(ServiceSpec("rr"), {})
    data = nft_read.frames(("ok",), nft_read.rows_of(table))
    record, back = asyncio.run(nft_read.unframe(data))
    assert record == ("ok",) and back == table
    assert asyncio.run(nft_read.unframe(nft_read.frames(("absent",)))) == (("absent",), {})
    with pytest.raises(ValueError):
        asyncio.run(nft_read.unframe(data[:-3]))


def test_a_reader_without_nft_answers_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    record, rows = nft_read.read_here("hacontrol")
    assert record[0] == "error" and "list table hacontrol" in record[1] and rows is None
