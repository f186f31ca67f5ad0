"""The slicing helpers keep order and bounds: ``chunks`` (services, destinations) and
``batches`` (actions, services touched), whatever the sizes (property)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacontrol.dataplane import slices
from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.table import ServiceKey

KEYS = [ServiceKey("tcp", "198.51.100.1", p) for p in range(1, 400)]


@given(st.lists(st.integers(0, 3000), max_size=len(KEYS)))
def test_chunks_keep_order_and_bounds(sizes: list[int]) -> None:
    keys = KEYS[: len(sizes)]
    size = dict(zip(keys, sizes, strict=True))
    pieces = slices.chunks(keys, size.__getitem__)
    assert [k for p in pieces for k in p] == keys
    for p in pieces:
        assert 1 <= len(p) <= slices.SLICE
        assert len(p) == 1 or sum(size[k] for k in p) <= slices.WORK  # a big one goes alone


@given(st.lists(st.integers(0, 150), max_size=1500), st.integers(1, 40), st.integers(1, 10))
def test_batches_keep_order_and_bounds(services: list[int], size: int, most: int) -> None:
    actions = [Action("del_service", KEYS[i]) for i in services]
    parts = slices.batches(actions, size, most)
    assert [a for p in parts for a in p] == actions
    for p in parts:
        assert 1 <= len(p) <= size and len({a.service for a in p}) <= most
