"""The one clock: monotonic seconds, injected everywhere timers matter. Never wall time.

A component takes ``clock: Clock`` (a callable returning monotonic seconds) for every "now" it
reads, and sleeps, waits and schedules only through the running event loop (``asyncio.sleep``,
``asyncio.timeout``, ``loop.call_later``), whose own ``time()`` is the same clock: the daemon
passes ``loop_clock()``; ``monotonic`` is what the default asyncio loop reads too.

Tests run those components on a :class:`VirtualTimeLoop`, whose time is virtual: whenever no
callback is ready and no I/O is waiting, the loop jumps straight to its next timer instead of
waiting for it. A test of a 30 s timeline takes milliseconds, and "now" (``loop.time``), the
sleeps and the timers cannot disagree. :class:`FakeClock` remains for pure code that only reads
"now" and is moved by hand.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, Protocol, TypeVar

T = TypeVar("T")
P = ParamSpec("P")


class Clock(Protocol):
    def __call__(self) -> float:
        """Monotonic seconds."""


def monotonic() -> float:
    return time.monotonic()


def loop_clock() -> Clock:
    """The running event loop's clock (the one its sleeps and timers use)."""
    return asyncio.get_running_loop().time


class FakeClock:
    """A clock tests move by hand (pure code that reads "now" and never sleeps)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class _VirtualSelector(selectors.DefaultSelector):
    """Polls the real file descriptors without blocking; an idle wait becomes a time jump."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only I/O or a thread can wake the loop
            blocked: list[tuple[selectors.SelectorKey, int]] = super().select(None)
            return blocked
        self._vloop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time, for tests and simulations.

    ``time()`` starts at ``start`` and moves only when the loop would otherwise wait: it then
    advances by exactly the wait to the next timer. Real sockets and threads still work, but a
    timer that is due wins against I/O that has not arrived yet, so tests on this loop use
    in-memory transports.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds


def run_virtual(main: Coroutine[Any, Any, T], start: float = 1000.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualTimeLoop`; close it afterwards."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def virtual(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """A coroutine function made a plain one that runs each call on a fresh
    :class:`VirtualTimeLoop` (a test decorator: ``@virtual async def test_x(): ...``)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_virtual(fn(*args, **kwargs))

    return run
