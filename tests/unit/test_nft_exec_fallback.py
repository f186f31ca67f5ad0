"""NftExec's choice between libnftables and the nft binary (no root: the library is replaced by
an in-memory stand-in, the binary by a recording runner; the real paths are tested on a kernel
in tests/integration/test_nft_exec.py)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from hacontrol.dataplane import nft_exec
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_exec import NftExec


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def __call__(self, *args: str, **kw: Any) -> tuple[int, str, str]:
        self.calls.append(args)
        return 0, "", ""


class StandIn:
    """A library whose ``run`` blocks until ``release`` is set (a hung call)."""

    release = threading.Event()
    runs: list[bytes] = []
    closed = 0

    def __init__(self, netns: str | None) -> None:
        self.netns = netns

    def run(self, text: bytes, as_json: bool) -> tuple[int, str, str]:
        StandIn.runs.append(text)
        if text == b"hang":
            StandIn.release.wait(60)
        return (0 if text != b"bad" else 1), "", "" if text != b"bad" else "Error: bad"

    def close(self) -> None:
        StandIn.closed += 1


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> type[StandIn]:
    monkeypatch.setattr(nft_exec, "LibNft", StandIn)
    StandIn.release.clear()
    StandIn.runs.clear()
    return StandIn


async def test_small_batches_go_to_the_library_big_ones_to_the_binary(stand_in: Any) -> None:
    binary = Recorder()
    ex = NftExec(binary, netns=None, limit=5.0, lib_max=10)
    assert await ex.batch(b"small") == (0, "", "")
    assert await ex.batch(b"bad") == (1, "", "Error: bad")  # nft's error, not a fallback
    assert await ex.batch(b"x" * 11) == (0, "", "")
    assert stand_in.runs == [b"small", b"bad"]
    assert binary.calls == [("-j", "-f", "-")]
    assert ex.sent == {"lib": 2, "binary": 1} and ex.mode == "lib"
    ex.close()


async def test_a_hung_call_is_given_up_and_the_binary_takes_over(stand_in: Any) -> None:
    binary = Recorder()
    ex = NftExec(binary, netns=None, limit=0.05)
    with pytest.raises(DataplaneError, match="timed out"):
        await ex.batch(b"hang")
    assert ex.mode == "binary"
    assert await ex.batch(b"after") == (0, "", "")
    assert binary.calls == [("-j", "-f", "-")]
    stand_in.release.set()  # the stuck call ends; nobody waits for it any more
    ex.close()


async def test_no_library_means_the_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nft_exec, "LIBRARY", "libnftables-hacontrol-missing.so.0")
    binary = Recorder()
    ex = NftExec(binary, netns=None, limit=5.0)
    assert await ex.batch(b"{}") == (0, "", "")
    assert ex.mode == "binary" and ex.sent == {"lib": 0, "binary": 1}
    ex.close()


async def test_binary_first_when_asked(stand_in: Any) -> None:
    binary = Recorder()
    ex = NftExec(binary, netns=None, limit=5.0, prefer_lib=False)
    await ex.batch(b"{}")
    assert stand_in.runs == [] and binary.calls == [("-j", "-f", "-")]
    ex.close()
