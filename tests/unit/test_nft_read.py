"""The nftables table reader's wire form: a table survives the trip through marshal as rows,
and a reader that cannot run nft answers an error record instead of raising."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from hacontrol.dataplane import nft_read
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.slices import SLICE
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService


def test_rows_round_trip_through_the_frames_in_slices() -> None:
    table = {
        ServiceKey("tcp", f"198.51.100.{1 + i // 250}", 1000 + i % 250): TableService(
            ServiceSpec("altered:wrr" if i == 3 else "wrr", 60 if i % 2 else 0),
            {DestKey(f"192.0.2.{j}", 8080): DestSpec(j % 3, "nat") for j in range(1, 5)},
        )
        for i in range(SLICE * 2 + 7)
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
    assert record[0] == "error" and "list ruleset inet" in record[1] and rows is None


def test_a_daemon_that_cannot_run_its_interpreter_reads_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # the unprivileged daemon of a virtualenv under a 0700 home cannot exec sys.executable
    # again: the reader then runs nft itself, on a worker thread, with the same answers
    fake = tmp_path / "nft"
    # a ruleset without our tables (another inet table only): absent
    listing = '{"nftables": [{"table": {"family": "inet", "name": "other", "handle": 1}}]}'
    fake.write_text(f"#!/bin/sh\necho '{listing}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    assert asyncio.run(nft_read.read_table("hacontrol")) is None
    fake.write_text('#!/bin/sh\necho "Error: Operation not permitted" >&2\nexit 1\n')
    with pytest.raises(DataplaneError, match="Operation not permitted"):
        asyncio.run(nft_read.read_table("hacontrol"))
