"""Big-table work in bounded slices that yield to the event loop (the reconciler's helpers).

A table of 37,000 destinations must never hold the event loop for long: the heartbeat is sent
from the same loop. The desired table is built, and compared with the kernel, a slice at a time
(``chunks``: at most ``SLICE`` services and about ``WORK`` destinations; ``diff_phases`` of each
slice, concatenated per phase, is the diff of the whole, see ``hacontrol.dataplane.diff``), and
the actions go to the plane in batches of at most ``BATCH`` (netlink messages / nft commands)
touching at most ``BATCH_SERVICES`` services, with ``asyncio.sleep(0)`` between slices and
batches. The pure work is the diff's; this module only cuts it up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Set

from hacontrol.dataplane.desired import DesiredSource
from hacontrol.dataplane.diff import Action, describe, diff_phases, join_phases
from hacontrol.dataplane.table import ServiceKey, Table, TableService

SLICE = 250  # services built or compared between two yields, at most
WORK = 1000  # destinations built or compared between two yields, about (16 a service: ~60)
BATCH = 500  # actions per apply call (netlink messages, nft element commands), at most
BATCH_SERVICES = 64  # services one apply call touches, at most (nft renders each one whole)


def chunks(keys: list[ServiceKey], size: Callable[[ServiceKey], int]) -> list[list[ServiceKey]]:
    """``keys`` in order, cut so that a piece holds at most ``SLICE`` services and about
    ``WORK`` destinations (``size``: a service's destinations; a bigger service goes alone)."""
    out: list[list[ServiceKey]] = []
    piece: list[ServiceKey] = []
    work = 0
    for key in keys:
        n = size(key)
        if piece and (len(piece) >= SLICE or work + n > WORK):
            out.append(piece)
            piece, work = [], 0
        piece.append(key)
        work += n
    if piece:
        out.append(piece)
    return out


async def build_sliced(
    source: DesiredSource, actual: Table, keys: Collection[ServiceKey] | None = None
) -> Table:
    """The desired services ``keys`` (all of the source's when None), ``SLICE`` at a time."""
    wanted = source.keys() if keys is None else sorted(keys)
    out: Table = {}
    work = 0
    for n, key in enumerate(wanted, 1):
        svc: TableService | None = source.service(key, actual.get(key))
        if svc is not None:
            out[key] = svc
            work += len(svc.dests)
        if n % SLICE == 0 or work >= WORK:
            work = 0
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
    # a change pass names its few services: nothing here is O(table) then
    everything = set(scope) if scope is not None else set(desired) | (set(actual) & set(owned))
    keys = sorted(everything)
    phases: tuple[list[Action], list[Action], list[Action], list[Action]] = ([], [], [], [])
    pieces = chunks(keys, lambda k: _size(desired, k) + _size(actual, k))
    for n, chunk in enumerate(pieces):
        if n:
            await asyncio.sleep(0)
        want = {k: desired[k] for k in chunk if k in desired}
        have = {k: actual[k] for k in chunk if k in actual}
        part = diff_phases(want, have, owned, forwarding_in_place=forwarding_in_place)
        for whole, piece in zip(phases, part, strict=True):
            whole.extend(piece)
    return join_phases(phases)


def _size(table: Table, key: ServiceKey) -> int:
    svc = table.get(key)
    return 0 if svc is None else len(svc.dests)


def batches(
    actions: list[Action], size: int = BATCH, services: int = BATCH_SERVICES
) -> list[list[Action]]:
    """``actions`` in order, cut into lists of at most ``size`` touching at most ``services``."""
    out: list[list[Action]] = []
    piece: list[Action] = []
    touched: set[ServiceKey] = set()
    for a in actions:
        if piece and (
            len(piece) >= size or (a.service not in touched and len(touched) >= services)
        ):
            out.append(piece)
            piece, touched = [], set()
        piece.append(a)
        touched.add(a.service)
    if piece:
        out.append(piece)
    return out


async def describe_sliced(view: Table, actual: Table, keys: Collection[ServiceKey]) -> list[str]:
    """``describe(view, actual, keys)``, ``SLICE`` services between two yields (the drift check
    of a periodic resync compares the whole table)."""
    out: list[str] = []
    for n, chunk in enumerate(chunks(sorted(keys), lambda k: _size(view, k) + _size(actual, k))):
        if n:
            await asyncio.sleep(0)
        out += describe(view, actual, chunk)
    return out
