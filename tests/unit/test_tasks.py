"""hacontrol.tasks.cancel_and_wait: every task cancelled and unwound before it returns; a task's
own failure raised, or swallowed with ``quiet``."""

from __future__ import annotations

import asyncio

import pytest

from hacontrol.tasks import cancel_and_wait


async def test_cancels_all_and_waits_for_their_cleanup() -> None:
    unwound: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            unwound.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in ("a", "b", "c")]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert unwound == ["a", "b", "c"] and all(t.cancelled() for t in tasks)
    await cancel_and_wait()  # nothing: nothing to do
    await cancel_and_wait(*tasks)  # already ended: no error


async def test_a_failed_task_raises_unless_quiet() -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    for quiet in (False, True):
        failed = asyncio.create_task(fail())
        waiting = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        assert failed.done()
        if quiet:
            await cancel_and_wait(failed, waiting, quiet=True)
        else:
            with pytest.raises(RuntimeError, match="boom"):
                await cancel_and_wait(failed, waiting)
            await cancel_and_wait(waiting)
        assert waiting.cancelled()
