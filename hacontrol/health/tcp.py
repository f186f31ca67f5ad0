"""The probe contract and the TCP connect probe (non-blocking sockets on loop callbacks).

A probe is one attempt, with no hysteresis (that is the tracker's job). The scheduler owns one
probe object per target and drives it through two calls:

* ``start(poller, done)``: begin one attempt (``poller.loop`` is the running loop); later (or
  even before returning) call ``done(ok, reason)`` exactly once, unless ``cancel()`` came first.
* ``cancel() -> str``: abort the attempt in flight (the scheduler's timeout or stop), release
  sockets/processes, never call ``done`` for it; returns the phase it was in (``"connecting"``),
  or ``""``, for the timeout reason.

Probes never raise out of ``start``: every failure is a ``done(False, reason)`` with a short,
operator-readable reason. To be cheap at 10,000 checks a second there is no Task, no
``wait_for``, no transport and no loop handle per check: a non-blocking socket (the C
``_socket.socket``, skipping the Python wrapper), ``connect_ex``, and a callback per step from
one shared epoll set (``Poller``), as in the C baseline (see docs/benchmarks.md). Sockets are
closed with RST (SO_LINGER 0).
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Callable
from typing import Protocol

__all__ = ["Done", "Poller", "Probe", "TcpProbe", "errno_reason"]

Done = Callable[[bool, str], None]

_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# close with RST, not FIN: no TIME_WAIT left on the director (10,000 checks/s would otherwise
# hold ~600,000 of them) and less kernel work per check; HAProxy's checks do the same
_LINGER_RST = struct.pack("ii", 1, 0)
_SOL_SOCKET, _SO_LINGER, _SO_ERROR = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_ERROR
_EPOLLOUT, _EPOLLIN = select.EPOLLOUT, select.EPOLLIN

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


class Poller:
    """One epoll set for every probe socket; the event loop watches only its one fd.

    Registering each short-lived socket with the loop itself (``add_writer``) costs a loop handle
    per check (uvloop allocates and frees a libuv poll handle); here a check costs one
    ``epoll_ctl`` like the C baseline. A socket is forgotten by closing it (the kernel drops it
    from the set); its handler is dropped from the table first, so a stale event is ignored.
    Sockets are only created by the scheduler tick, never while events are dispatched.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ep = select.epoll()
        self._handlers: dict[int, Callable[[], None]] = {}
        loop.add_reader(self._ep.fileno(), self.dispatch)

    def watch(self, fd: int, events: int, handler: Callable[[], None]) -> None:
        self._ep.register(fd, events)
        self._handlers[fd] = handler

    def rewatch(self, fd: int, events: int, handler: Callable[[], None]) -> None:
        self._ep.modify(fd, events)
        self._handlers[fd] = handler

    def forget(self, fd: int) -> None:
        """Drop the handler of a socket about to be closed (closing removes it from the set)."""
        self._handlers.pop(fd, None)

    def dispatch(self) -> None:
        """Run the handlers of every ready socket (also called by the scheduler right after a
        launch slice, like a C loop's epoll_wait after its connects: sockets that are already
        connected are served in the same wakeup)."""
        handlers = self._handlers
        for fd, _ in self._ep.poll(0, 1024):
            h = handlers.get(fd)
            if h is not None:
                h()

    def close(self) -> None:
        if not self._ep.closed:
            self.loop.remove_reader(self._ep.fileno())
            self._ep.close()
        self._handlers.clear()


class Probe(Protocol):
    kind: str

    def start(self, poller: Poller, done: Done) -> None: ...

    def cancel(self) -> str: ...

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The Task of an attempt still starting (https connect, exec spawn), else None: a
        stopping scheduler lets it unwind after ``cancel``."""


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
    __slots__ = ("_addr", "_done", "_family", "_fd", "_poller", "_sock", "_watch")

    def __init__(self, address: str, port: int) -> None:
        self._family, self._addr = sockaddr(address, port)
        self._sock: _socket.socket | None = None
        self._fd = -1
        self._watch = 0  # 0 not in the poller, 1 waiting to write, 2 waiting to read
        self._poller: Poller | None = None
        self._done: Done | None = None

    def start(self, poller: Poller, done: Done) -> None:
        self._poller = poller
        self._done = done
        try:
            sock = _socket.socket(self._family, _SOCK_TYPE)
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, _LINGER_RST)
        except OSError as e:
            done(False, errno_reason(e.errno or 0))
            return
        self._sock = sock
        self._fd = fd = sock.fileno()
        err = sock.connect_ex(self._addr)
        if err == errno.EINPROGRESS:
            self._watch = 1
            poller.watch(fd, _EPOLLOUT, self._on_connect)
        elif err == 0:
            self._connected()
        else:
            self._finish(False, errno_reason(err))

    def _on_connect(self) -> None:
        sock = self._sock
        if sock is None:
            return
        err = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
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
        if self._watch:
            self._poller.forget(self._fd)  # type: ignore[union-attr]
            self._watch = 0
        self._sock = None
        sock.close()

    def _finish(self, ok: bool, reason: str) -> None:
        self._release()
        done = self._done
        self._done = None
        if done is not None:
            done(ok, reason)

    @property
    def task(self) -> None:
        """Never a Task: the connect runs on the shared epoll set."""
        return None

    def cancel(self) -> str:
        phase = "connecting" if self._watch == 1 else ""
        self._done = None
        self._release()
        return phase
