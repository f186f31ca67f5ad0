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

A freeze comes after the pass; during it, the kernel listing and the desired table it builds
(36,544 destinations: hundreds of thousands of new objects, all alive until the pass ends) are
walked by every full collection that falls in it: 45-217 ms each, every few seconds, holding the
event loop (the heartbeat reads, the checks, the API). ``hold()`` spans a whole-table pass: no
full collection starts inside it (the generation-2 threshold is raised, the young generations
are still collected), and the previous thresholds are back when it ends, also on an error. What
the pass leaves is then frozen by ``settle``; its garbage was freed by reference counts.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

from hacontrol import logs

log = logs.get("hacontrol.heap")

MIN_GAP = 5.0  # seconds between two freezes at least (a freeze after every small pass is waste)
NO_FULL = 1 << 30  # a generation-2 threshold never reached (counted in generation-1 passes)


class Settler:
    def __init__(self) -> None:
        self._last = -MIN_GAP
        self.freezes = 0
        self.holding = False  # inside ``hold()``

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

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """No full (generation 2) collection inside; nested holds keep the outermost's
        thresholds. The young generations are still collected."""
        if self.holding:
            yield
            return
        t0, t1, t2 = gc.get_threshold()
        gc.set_threshold(t0, t1, NO_FULL)
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            gc.set_threshold(t0, t1, t2)
