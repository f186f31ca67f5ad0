"""Stopping asyncio tasks: the one "cancel, then wait for each to end" of the code.

``cancel_and_wait`` cancels every task it is given, then waits for each in turn, so a stop returns
only when its tasks have unwound (their ``finally`` blocks ran, their children were reaped). A
task's CancelledError is not an error here; an exception it ended with is raised, or with
``quiet`` swallowed too (a stop that must finish whatever its tasks did: they logged their own).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

__all__ = ["cancel_and_wait"]


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, quiet: bool = False) -> None:
    """Cancel each of ``tasks`` (None: skipped), then await each; see the module docstring."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    swallow: tuple[type[BaseException], ...] = (
        (asyncio.CancelledError, Exception) if quiet else (asyncio.CancelledError,)
    )
    for t in live:
        with contextlib.suppress(*swallow):
            await t
