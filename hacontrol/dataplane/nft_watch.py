"""The watcher of nf_tables notifications: a foreign change to our table asks for a resync at once.

Without it, ``nft flush table inet hacontrol`` (or a delete) stopped all forwarding until the next
periodic resync (``resync_interval``). ``NftWatch`` holds a NETLINK_NETFILTER socket subscribed to
NFNLGRP_NFTABLES (opened inside the plane's ``netns`` when given: on a short thread that enters
it, as ``hacontrol.dataplane.nft_exec`` does; needs CAP_NET_ADMIN), read on the event loop with
``add_reader``: at most ``BURST`` datagrams per wake, each parsed and followed by
``hacontrol.dataplane.nft_notify`` (only the type and the table name). A transaction that touched
our table and was committed by a task that is not ours (``own(pid)``: the daemon's threads, the
nft children it started) calls ``changed(reason, count)``, coalesced: the first at once, then at
most one per ``min_gap`` seconds carrying how many foreign transactions it stands for (a flood
from a busy nft user gives one resync a second). A receive-buffer overrun (ENOBUFS: notifications
lost) counts as a foreign change, since we cannot tell.

It never takes the daemon down: a malformed datagram is logged and skipped; a socket error or a
bug in the callback closes the socket, logs ``dataplane.watch_error`` and reopens it after an
exponential backoff (1 s to 60 s), then asks a resync (changes may have been missed meanwhile). A
socket the kernel refuses (no permission, no nfnetlink) disables the watcher with a warning
(``dataplane.watch_disabled``): the periodic resync still repairs drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import Callable

from hacontrol import logs
from hacontrol.dataplane.nft_exec import enter_netns
from hacontrol.dataplane.nft_notify import NFPROTO_INET, Tracker, parse
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.dataplane.nft_watch")

NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
RCVBUF = 4 << 20  # bytes: a whole-table rewrite of ours is many notifications at once
DATAGRAM = 1 << 16  # bytes: the kernel packs notifications into skbs far smaller than this
BURST = 64  # datagrams per wake of the reader: the loop gets its turn between bursts
BACKOFF = (1.0, 60.0)
DISABLING = (errno.EPERM, errno.EACCES, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT)
Changed = Callable[[str, int], None]


def open_socket(netns: str | None) -> socket.socket:
    """A non-blocking netlink socket on the nf_tables group (in ``netns`` when given)."""
    if not netns:
        return _open_here()
    box: list[socket.socket | BaseException] = []

    def run() -> None:  # this thread alone enters the namespace, and ends
        try:
            enter_netns(netns)
            box.append(_open_here())
        except BaseException as e:
            box.append(e)

    thread = threading.Thread(target=run, name="hacontrol-nft-watch-open", daemon=True)
    thread.start()
    thread.join(5.0)
    if not box:
        raise OSError(errno.ETIMEDOUT, f"opening the watch socket in {netns} timed out")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _open_here() -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_NETFILTER
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
    except BaseException:
        sock.close()
        raise
    return sock


class NftWatch:
    """Watches our nftables tables (``inet``, the names ``mine`` accepts) for changes made by
    others."""

    def __init__(
        self,
        mine: Callable[[str], bool],
        changed: Changed,
        own: Callable[[int], bool],
        *,
        netns: str | None = None,
        min_gap: float = 1.0,
    ) -> None:
        self.netns = netns
        self.min_gap = min_gap
        self.tracker = Tracker(mine, NFPROTO_INET, own)
        self._changed = changed
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_fire: float | None = None
        self._pending = 0  # foreign changes since the last call of ``changed``
        self._reason = ""
        self.state = "stopped"  # stopped | watching | retrying | disabled
        self.watching = asyncio.Event()  # set while the socket is open (tests wait on it)
        self.refused = 0  # malformed datagrams skipped
        self.foreign = 0  # foreign changes seen (before coalescing)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="hacontrol-nft-watch"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = "stopped"

    # -- the socket's life ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay, opened_before = BACKOFF[0], False
        while True:
            try:
                sock = open_socket(self.netns)
            except Exception as e:  # an OSError, or anything unforeseen: never fatal
                if isinstance(e, OSError) and e.errno in DISABLING:
                    self.state = "disabled"
                    log.warning(
                        "dataplane.watch_disabled",
                        reason=f"cannot open the nf_tables notification socket: {e}",
                        repair="at the periodic resync only",
                    )
                    return
                why = f"cannot open the nf_tables notification socket: {e}"
            else:
                self.state = "watching"
                self.watching.set()
                if opened_before:  # changes made while it was closed were not seen
                    self._foreign("the notification watch restarted: changes may be missed")
                opened_before = True
                try:
                    why = await self._serve(sock)
                except Exception as e:  # add_reader refused, a bug: log, back off, reopen
                    why = f"{type(e).__name__}: {e}"
                finally:
                    self.watching.clear()
                delay = BACKOFF[0] if why.startswith("ran") else delay
            self.state = "retrying"
            log.warning("dataplane.watch_error", reason=why, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(BACKOFF[1], delay * 2)

    async def _serve(self, sock: socket.socket) -> str:
        """Read ``sock`` until it fails: why it failed."""
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[str] = loop.create_future()
        started = loop.time()
        try:
            loop.add_reader(sock.fileno(), self._readable, sock, failed)
            why = await failed
        finally:
            with contextlib.suppress(Exception):
                loop.remove_reader(sock.fileno())
            sock.close()
        if loop.time() - started > BACKOFF[1]:
            return f"ran {loop.time() - started:.0f}s, then: {why}"
        return why

    def _readable(self, sock: socket.socket, failed: asyncio.Future[str]) -> None:
        if failed.done():
            return
        try:
            for _ in range(BURST):
                try:
                    data, _anc, flags, _addr = sock.recvmsg(DATAGRAM)
                except BlockingIOError:
                    return
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self._foreign("notifications lost (receive buffer overrun)")
                        continue
                    failed.set_result(f"receive: {e}")
                    return
                if flags & socket.MSG_TRUNC:
                    self._refuse(f"datagram over {DATAGRAM} bytes truncated")
                    continue
                self._datagram(data)
        except Exception as e:  # a bug here must not end the loop's reader: reopen instead
            failed.set_result(f"{type(e).__name__}: {e}")

    def _datagram(self, data: bytes) -> None:
        parsed = parse(data)
        for note in parsed.notes:
            reason = self.tracker.feed(note)
            if reason is not None:
                self._foreign(reason)
        if parsed.error is not None:
            self._refuse(parsed.error)

    def _refuse(self, why: str) -> None:
        self.refused += 1
        log.warning("dataplane.watch_refused", reason=f"malformed notification: {why}")

    # -- coalescing -----------------------------------------------------------------------------

    def _foreign(self, reason: str) -> None:
        self.foreign += 1
        self._pending += 1
        if not self._reason:
            self._reason = reason  # the first of a burst says why
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait = 0.0
        if self._last_fire is not None:
            wait = max(0.0, self._last_fire + self.min_gap - loop.time())
        self._timer = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._last_fire = asyncio.get_running_loop().time()
        reason, count = self._reason, self._pending
        self._reason, self._pending = "", 0
        try:
            self._changed(reason, count)
        except Exception as e:  # the callback's bug is logged, the watch goes on
            log.error("dataplane.watch_error", reason=f"change callback: {e}")
