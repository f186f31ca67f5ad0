"""Big-table work in bounded slices that yield to the event loop (the reconciler's helpers).

A table of 10,000 destinations must never hold the event loop for long: the heartbeat is sent
from the same loop. The desired table is built ``SLICE`` services at a time, the compare with the
kernel runs ``SLICE`` services at a time (``diff_phases`` of each slice, concatenated per phase,
is the diff of the whole, see ``hacontrol.dataplane.diff``), and the actions go to the plane in
batches of at most ``BATCH`` (netlink messages / nft commands), with ``asyncio.sleep(0)``
between slices and batches. The pure work is the diff's; this module only cuts it up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Set

from hacontrol.dataplane.desired import DesiredSource
from hacontrol.dataplane.diff import Action, describe, diff_phases, join_phases
from hacontrol.dataplane.table import ServiceKey, Table, TableService

SLICE = 250  # services built or compared between two yields
BATCH = 500  # actions per apply call (netlink messages, nft element commands)


async def build_sliced(
    source: DesiredSource, actual: Table, keys: Collection[ServiceKey] | None = None
) -> Table:
    """The desired services ``keys`` (all of the source's when None), ``SLICE`` at a time."""
    wanted = source.keys() if keys is None else sorted(keys)
    out: Table = {}
    for n, key in enumerate(wanted, 1):
        svc: TableService | None = source.service(key, actual.get(key))
        if svc is not None:
            out[key] = svc
        if n % SLICE == 0:
            await asyncio.sleep(0)
    return out


async def diff_sliced(
    desired: Table,
    actual: Table,
    owned: Set[ServiceKey],
    *,
    forwarding_in_place: bool,
    scope: Collection[ServiceKey] | None = None,
) -> list[Action]:
    """``diff(desired, actual, owned)`` restricted to ``scope`` (every service when None),
    computed ``SLICE`` services at a time; the same list as the whole diff (property-tested)."""
    everything = set(desired) | (set(actual) & set(owned))
    keys = sorted(everything if scope is None else set(scope))
    phases: tuple[list[Action], list[Action], list[Action], list[Action]] = ([], [], [], [])
    for start in range(0, len(keys), SLICE):
        chunk = keys[start : start + SLICE]
        want = {k: desired[k] for k in chunk if k in desired}
        have = {k: actual[k] for k in chunk if k in actual}
        part = diff_phases(want, have, owned, forwarding_in_place=forwarding_in_place)
        for whole, piece in zip(phases, part, strict=True):
            whole.extend(piece)
        if start + SLICE < len(keys):
            await asyncio.sleep(0)
    return join_phases(phases)


def batches(actions: list[Action], size: int = BATCH) -> list[list[Action]]:
    """``actions`` in order, cut into lists of at most ``size``."""
    return [actions[i : i + size] for i in range(0, len(actions), size)]


async def describe_sliced(view: Table, actual: Table, keys: Collection[ServiceKey]) -> list[str]:
    """``describe(view, actual, keys)``, ``SLICE`` services between two yields (the drift check
    of a periodic resync compares the whole table)."""
    ordered = sorted(keys)
    out: list[str] = []
    for start in range(0, len(ordered), SLICE):
        out += describe(view, actual, ordered[start : start + SLICE])
        if start + SLICE < len(ordered):
            await asyncio.sleep(0)
    return out
