"""The notification watch's shell (``hacontrol.dataplane.nft_watch``) on a stand-in socket: a
datagram pair carries hand-built netlink bytes, so no privilege is needed. Foreign transactions
on our table call back, coalesced to one call per ``min_gap`` carrying the count; our own, a
foreign table's and a garbage datagram call nothing; a socket that fails is reopened after a
backoff with a resync asked; a namespace that does not exist is retried, never raised. Virtual
time throughout."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from hacontrol.clock import virtual
from hacontrol.dataplane import nft_watch
from hacontrol.dataplane.nft_watch import NftWatch
from tests.unit.test_nft_notify import newgen, obj

OURS = "hacontrol"
FLUSH = obj(8, OURS) + newgen(4242)  # a delrule on our table, by pid 4242 (not ours)


@pytest.fixture
def pairs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """Each open of the watch gets a fresh datagram pair's reading end; the list holds the
    writing ends, in order."""
    writers: list[socket.socket] = []
    readers: list[socket.socket] = []

    def fake_open(netns: str | None) -> socket.socket:
        r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        r.setblocking(False)
        readers.append(r)
        writers.append(w)
        return r

    monkeypatch.setattr(nft_watch, "open_socket", fake_open)
    yield writers
    for s in writers + readers:
        s.close()


async def _until(pred: object, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not pred():  # type: ignore[operator]  # noqa: ASYNC110 - state of the shell
            await asyncio.sleep(0.01)


@virtual
async def test_foreign_changes_call_back_coalesced_and_the_rest_is_ignored(
    pairs: list[socket.socket],
) -> None:
    calls: list[tuple[str, int]] = []
    at: list[float] = []

    def changed(reason: str, count: int) -> None:
        calls.append((reason, count))
        at.append(asyncio.get_running_loop().time())

    w = NftWatch(OURS.__eq__, changed, own=lambda pid: pid == 1, min_gap=1.0)
    w.start()
    try:
        await w.watching.wait()
        out = pairs[0]
        out.send(obj(8, OURS) + newgen(1))  # our own commit
        out.send(obj(8, "other") + newgen(4242))  # a foreign table
        out.send(b"\x01\x02garbage")  # refused, logged, nothing else
        await _until(lambda: w.refused == 1)
        assert calls == [] and w.tracker.own_seen == 1
        out.send(FLUSH)  # the first foreign change: at once
        await _until(lambda: len(calls) == 1)
        for _ in range(10):  # a storm: one call after min_gap, carrying all ten
            out.send(FLUSH)
        await _until(lambda: len(calls) == 2)
        assert at[1] - at[0] >= 1.0 - 1e-9  # virtual time: the gap held (float rounding)
        assert calls == [("delrule x1 by nft (pid 4242)", 1), ("delrule x1 by nft (pid 4242)", 10)]
        assert w.foreign == 11
    finally:
        await w.stop()


@virtual
async def test_a_failing_reader_is_reopened_and_a_resync_asked(pairs: list[socket.socket]) -> None:
    calls: list[tuple[str, int]] = []
    fails = [True]

    def own(pid: int) -> bool:
        if fails.pop() if fails else False:
            raise RuntimeError("a bug in the own check")
        return False

    w = NftWatch(OURS.__eq__, lambda r, n: calls.append((r, n)), own=own)
    with capture_logs() as logs:
        w.start()
        try:
            await w.watching.wait()
            pairs[0].send(FLUSH)  # the reader raises: socket closed, reopened after 1 s
            await _until(lambda: len(pairs) == 2 and w.watching.is_set())
            await _until(lambda: len(calls) == 1)
            assert "restarted" in calls[0][0]
            pairs[1].send(FLUSH)  # the new socket works
            await _until(lambda: len(calls) == 2)
            assert calls[1] == ("delrule x1 by nft (pid 4242)", 1)
        finally:
            await w.stop()
    errors = [e for e in logs if e["event"] == "dataplane.watch_error"]
    assert errors and "a bug in the own check" in errors[0]["reason"]


@virtual
async def test_a_missing_namespace_is_retried_with_backoff_never_raised() -> None:
    w = NftWatch(OURS.__eq__, lambda r, n: None, own=lambda pid: False, netns="hc-no-such-netns")
    with capture_logs() as logs:
        w.start()
        try:
            await _until(lambda: sum(e["event"] == "dataplane.watch_error" for e in logs) >= 3)
        finally:
            await w.stop()
    retries = [e["retry_in"] for e in logs if e["event"] == "dataplane.watch_error"]
    assert retries[:3] == [1.0, 2.0, 4.0] and w.state == "stopped"
