"""pytest glue for the in-guest IPVS suite (tests/ipvs), run by tests/integration/test_ipvs_vm.py.

Every test here must carry the ``ipvs`` mark: an unmarked one is a collection error naming it
(it would otherwise run nowhere: the host skips this folder, and a guest selecting by mark would
leave it out). These tests need a kernel with IPVS: on a host without ``/proc/net/ip_vs`` they
are deselected from the host's run (reported as deselected, not skipped: they do run, in the
guest) — the vm-marked host test collects this folder's ids (``--collect-only`` keeps them),
boots the qemu guest, runs exactly those ids there and fails unless every one passed.
``clean_ipvs`` empties the kernel table before and after a test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ipvslab import ipvsadm

from hacontrol.dataplane.ipvs import IpvsDataplane

IPVS_PROC = "/proc/net/ip_vs"
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [i for i in items if HERE in Path(str(i.path)).resolve().parents]
    unmarked = [i.nodeid for i in ours if i.get_closest_marker("ipvs") is None]
    if unmarked:
        raise pytest.UsageError(
            "tests under tests/ipvs must be marked @pytest.mark.ipvs (pytestmark = "
            "pytest.mark.ipvs), else they run nowhere; unmarked: " + ", ".join(unmarked)
        )
    if os.path.exists(IPVS_PROC) or config.option.collectonly or not ours:
        return
    config.hook.pytest_deselected(items=ours)  # they run in the guest (test_ipvs_vm)
    keep = set(map(id, ours))
    items[:] = [i for i in items if id(i) not in keep]


@pytest.fixture
def clean_ipvs() -> Iterator[None]:
    ipvsadm("-C")
    try:
        yield
    finally:
        ipvsadm("-C")


@pytest.fixture
async def plane() -> AsyncIterator[IpvsDataplane]:
    """An opened IPVS plane on the guest's kernel, closed afterwards."""
    p = IpvsDataplane()
    await p.open()
    try:
        yield p
    finally:
        await p.close()
