"""Keep the garbage collector's full passes short on a big table: freeze what a big pass left.

CPython's cyclic collector stops the interpreter for a full (generation 2) pass over every
tracked object: at 36,544 destinations (tables, config, health targets: millions of objects)
each took 100-380 ms, every few seconds while a resync builds new tables, and the heartbeat is
sent from the same interpreter. Nearly all of it is live (they collected 0-30 objects). After a
pass over the whole table (start, reload, resync) or a big one (the first load's) the daemon
calls ``settle()``:
``gc.freeze()`` moves every object alive then to the permanent generation, which the collector
no longer walks; what dies later is still freed by its reference count (tables, config and
targets hold no cycles), so a full pass walks only what was made since. The cost: a reference
cycle that was alive at a freeze and dies later is not reclaimed (asyncio keeps few such; the
frozen count is logged, ``gc.freeze``, to watch it). Never called under the unit tests' loops.
"""

from __future__ import annotations

import gc
import time

from hacontrol import logs

log = logs.get("hacontrol.heap")

MIN_GAP = 5.0  # seconds between two freezes at least (a freeze after every small pass is waste)


class Settler:
    def __init__(self) -> None:
        self._last = -MIN_GAP
        self.freezes = 0

    def settle(self, reason: str = "a pass over the whole table", now: bool = False) -> None:
        """Freeze what is alive now (at most every ``MIN_GAP`` seconds; ``now``: at once,
        without delaying the next one: the config loaded at start, before its first pass)."""
        t = time.monotonic()
        if not now:
            if t - self._last < MIN_GAP:
                return
            self._last = t
        gc.freeze()
        self.freezes += 1
        log.debug("gc.freeze", frozen=gc.get_freeze_count(), reason=reason)
