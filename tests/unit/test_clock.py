"""The virtual-time loop: sleeps, timeouts and timers run on one clock that jumps instead of
waiting, and real I/O still wakes it."""

from __future__ import annotations

import asyncio
import socket
import time

from hacontrol.clock import FakeClock, VirtualTimeLoop, run_virtual


def test_sleep_timeout_and_timer_share_the_virtual_clock() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(30)
        fired: list[float] = []
        loop.call_later(5, lambda: fired.append(loop.time()))
        try:
            async with asyncio.timeout(10):
                await asyncio.Event().wait()
        except TimeoutError:
            pass
        return loop.time() - t0, fired

    started = time.monotonic()
    elapsed, fired = run_virtual(main(), start=500.0)
    assert elapsed == 40.0
    assert fired == [535.0]
    assert time.monotonic() - started < 5.0  # 40 virtual seconds, no real waiting


def test_ready_io_is_delivered_before_time_jumps() -> None:
    async def main() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        t0 = loop.time()
        b.send(b"x")
        data = await asyncio.wait_for(loop.sock_recv(a, 1), 60)
        a.close()
        b.close()
        return data, loop.time() - t0

    data, elapsed = run_virtual(main())
    assert data == b"x"
    assert elapsed == 0.0


def test_thread_wakes_a_loop_with_no_timer() -> None:
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: 7)

    assert run_virtual(main()) == 7


def test_fake_clock_moves_by_hand() -> None:
    c = FakeClock(10.0)
    assert c() == 10.0
    assert c.advance(2.5) == 12.5 == c()
    loop = VirtualTimeLoop(3.0)
    loop.advance(-1.0)  # time never goes back
    assert loop.time() == 3.0
    loop.close()
