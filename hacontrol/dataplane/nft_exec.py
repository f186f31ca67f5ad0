"""Running nft batches for the nftables data plane: libnftables in the daemon, else the binary.

The per-event deltas themselves now go as our own netlink batch (``hacontrol.dataplane.nftnl``);
this is their fallback, and the path of listings and whole tables.

Each ``nft -j -f`` of the plane's per-event transaction cost a fork and exec of nft, and nft's
fresh cache of the whole table (every chain and set of the netns, dumped over netlink): 20-30 ms
on a busy small host, most of the time from a health change to the kernel. ``NftExec`` sends the
same JSON batch through ``libnftables.so.1`` (what nft and python3-nftables use; the Debian
nftables package depends on libnftables1) loaded with ctypes, on one worker thread of its own
(ctypes drops the GIL there, so the event loop keeps running; calls are serialized: one context,
one netlink socket). With ``netns`` the thread enters that named namespace (``/run/netns/NAME``,
as ``ip netns exec`` does; needs CAP_SYS_ADMIN, tests and the lab) before it opens the context,
so the context's socket lives there.

Only batches up to ``lib_max`` bytes (256 KiB: about a hundred services' changes) go through the
library. A whole-table batch (the first load, a rewrite) goes to the binary: parsing it in our
process would leave its peak in the daemon's heap (measured: 36,544 destinations, RSS 34 -> 239
MB through the library, 34 -> 45 MB through the binary), and those are rare and not urgent.

When the library cannot be loaded, the namespace cannot be entered, or a call outlives its
``limit`` (a stuck call cannot be cancelled: the thread and its context are given up), the plane
falls back to running the nft binary (``run``, normally ``hacontrol.dataplane.nft.run_nft``) for
good, logged once as ``dataplane.nft_exec_fallback``. ``mode`` says which is in use (``lib`` or
``binary``), ``sent`` counts the batches each way; ``prefer_lib=False`` starts with the binary
(tests of both paths, the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError

log = logs.get("hacontrol.dataplane.nft_exec")

LIBRARY = "libnftables.so.1"
CLONE_NEWNET = 0x40000000
LIB_MAX = 256 << 10  # bytes: bigger batches go to the binary (their peak dies with it)
OUTPUT_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON: 1.0.x parses a JSON buffer only with it set
BinaryRunner = Callable[..., Awaitable[tuple[int, str, str]]]


class LibNft:
    """One libnftables context; every method runs on the owning worker thread only."""

    def __init__(self, netns: str | None) -> None:
        if netns:
            enter_netns(netns)
        lib = ctypes.CDLL(LIBRARY)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise OSError("nft_ctx_new failed")
        if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
            lib.nft_ctx_free(ctx)
            raise OSError("cannot buffer libnftables output")
        self.lib, self.ctx = lib, ctx

    def run(self, text: bytes, as_json: bool) -> tuple[int, str, str]:
        self.lib.nft_ctx_output_set_flags(self.ctx, OUTPUT_JSON if as_json else 0)
        rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text)
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return (1 if rc else 0), out.decode(errors="replace"), err.decode(errors="replace").strip()

    def close(self) -> None:
        self.lib.nft_ctx_free(self.ctx)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Worker:
    """One daemon thread running calls in order (a stuck C call cannot hold up the process's
    exit, as a ThreadPoolExecutor's thread would: it is joined at exit)."""

    def __init__(self, name: str = "hacontrol-nft") -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut, loop = job
            try:
                ok, value = True, fn(*args)
            except BaseException as e:  # handed to the awaiting coroutine
                ok, value = False, e
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_settle, fut, ok, value)

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, fut, loop))
        return fut

    def stop(self, last: Callable[[], Any] | None = None) -> None:
        """Run ``last`` (if any) after the calls queued, then end the thread."""
        if last is not None:
            self._jobs.put((last, (), None, None))
        self._jobs.put(None)


class NftExec:
    """Runs batches and commands for one plane: in-process libnftables, else ``run``."""

    def __init__(
        self,
        run: BinaryRunner,
        *,
        netns: str | None,
        limit: float,
        prefer_lib: bool = True,
        lib_max: int = LIB_MAX,
    ) -> None:
        self._run = run
        self.lib_max = lib_max
        self.netns = netns
        self.limit = limit
        self._pool: Worker | None = None
        self._lib: LibNft | None = None
        self.mode = "lib" if prefer_lib else "binary"
        self.sent = {"lib": 0, "binary": 0}  # batches each way (tests, the benchmark)

    async def batch(self, doc: bytes, *, binary: bool = False) -> tuple[int, str, str]:
        """Run a JSON batch (``nft -j -f -``): (status, stdout, stderr); through the binary when
        ``binary`` (libnftables keeps its cache of every table it listed)."""
        if not binary and self.mode == "lib" and len(doc) <= self.lib_max and await self._ready():
            self.sent["lib"] += 1
            return await self._call(doc, as_json=True)
        self.sent["binary"] += 1
        return await self._run("-j", "-f", "-", stdin=doc, netns=self.netns, limit=self.limit)

    async def command(self, *args: str) -> tuple[int, str, str]:
        """Run one nft command line through the binary (listings, the probe at open)."""
        return await self._run(*args, netns=self.netns, limit=self.limit)

    async def _ready(self) -> bool:
        if self._lib is not None:
            return True
        self._pool = Worker()
        try:
            self._lib = await self._pool.submit(LibNft, self.netns)
        except (OSError, AttributeError) as e:
            self._fallback(f"libnftables unavailable: {e}")
            return False
        return True

    async def _call(self, text: bytes, *, as_json: bool) -> tuple[int, str, str]:
        lib, pool = self._lib, self._pool
        assert lib is not None and pool is not None
        fut = pool.submit(lib.run, text, as_json)
        try:
            async with asyncio.timeout(self.limit):
                return await asyncio.shield(fut)
        except TimeoutError:
            # the call cannot be stopped; it may still commit. The caller treats the table as
            # unknown (reads it again); the thread and its context are left to finish alone
            self._lib = None
            self._fallback(f"a libnftables call outlived {self.limit}s")
            raise DataplaneError(f"nftables: libnftables timed out after {self.limit}s") from None

    def _fallback(self, reason: str) -> None:
        self.mode = "binary"
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        log.warning("dataplane.nft_exec_fallback", reason=reason, runner="nft binary")

    def close(self) -> None:
        """Free the context and stop the worker thread (after the last call)."""
        lib, pool = self._lib, self._pool
        self._lib = self._pool = None
        if pool is not None:
            pool.stop(lib.close if lib is not None else None)
