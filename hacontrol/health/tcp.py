"""The probe contract and the TCP connect probe (non-blocking sockets on loop callbacks).

A probe is one attempt, with no hysteresis (that is the tracker's job). The scheduler owns one
probe object per target and drives it through two calls:

* ``start(loop, done)``: begin one attempt; later (or even before returning) call
  ``done(ok, reason)`` exactly once, unless ``cancel()`` came first.
* ``cancel() -> str``: abort the attempt in flight (the scheduler's timeout or stop), release
  sockets/processes, never call ``done`` for it; returns the phase it was in (``"connecting"``),
  or ``""``, for the timeout reason.

Probes never raise out of ``start``: every failure is a ``done(False, reason)`` with a short,
operator-readable reason. To be cheap at 10,000 checks a second there is no Task, no
``wait_for`` and no transport: a non-blocking socket, ``connect_ex`` and one
``add_writer``/``add_reader`` callback per step (see docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Protocol

__all__ = ["Done", "Probe", "TcpProbe", "errno_reason"]

Done = Callable[[bool, str], None]

_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

_REASONS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connect timed out (kernel)",
    errno.EADDRNOTAVAIL: "no local address/port available",
    errno.EMFILE: "out of file descriptors",
    errno.ENFILE: "out of file descriptors",
    errno.EPIPE: "connection closed by peer",
}


def errno_reason(err: int) -> str:
    """A short reason for an errno: "connection refused", "host unreachable", ..."""
    return _REASONS.get(err) or os.strerror(err).lower()


class Probe(Protocol):
    kind: str

    def start(self, loop: asyncio.AbstractEventLoop, done: Done) -> None: ...

    def cancel(self) -> str: ...


def sockaddr(address: str, port: int) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """(family, sockaddr) for a literal IP address; ValueError for anything else."""
    ip = ipaddress.ip_address(address)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), port, 0, 0)
    return socket.AF_INET, (str(ip), port)


class TcpProbe:
    """Passes when a TCP connection is established; the socket is closed at once."""

    kind = "tcp"
    __slots__ = ("_addr", "_done", "_family", "_fd", "_loop", "_sock", "_watch")

    def __init__(self, address: str, port: int) -> None:
        self._family, self._addr = sockaddr(address, port)
        self._sock: socket.socket | None = None
        self._fd = -1
        self._watch = 0  # 0 none, 1 writer, 2 reader registered on the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: Done | None = None

    def start(self, loop: asyncio.AbstractEventLoop, done: Done) -> None:
        self._loop = loop
        self._done = done
        try:
            sock = socket.socket(self._family, _SOCK_TYPE)
        except OSError as e:
            done(False, errno_reason(e.errno or 0))
            return
        self._sock = sock
        self._fd = fd = sock.fileno()
        err = sock.connect_ex(self._addr)
        if err == errno.EINPROGRESS:
            self._watch = 1
            loop.add_writer(fd, self._on_connect)
        elif err == 0:
            self._connected()
        else:
            self._finish(False, errno_reason(err))

    def _on_connect(self) -> None:
        sock = self._sock
        if sock is None:
            return
        self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
        self._watch = 0
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(False, errno_reason(err))
        else:
            self._connected()

    def _connected(self) -> None:
        """The connection is up: a TCP check is done (subclasses go on to talk)."""
        self._finish(True, "connected")

    def _release(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._watch == 1:
            self._loop.remove_writer(self._fd)  # type: ignore[union-attr]
        elif self._watch == 2:
            self._loop.remove_reader(self._fd)  # type: ignore[union-attr]
        self._watch = 0
        self._sock = None
        sock.close()

    def _finish(self, ok: bool, reason: str) -> None:
        self._release()
        done = self._done
        self._done = None
        if done is not None:
            done(ok, reason)

    def cancel(self) -> str:
        phase = "connecting" if self._watch == 1 else ""
        self._done = None
        self._release()
        return phase
