"""Shared pytest fixtures: root gating for real-kernel tests and a namespace lab that always
cleans up after itself."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from hacontrol.lab.netns import NetnsLab, cleanup_stale


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _root_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _root_reason() is None:
        cleanup_stale()


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A fresh NetnsLab; every namespace and process it made is removed, pass or fail."""
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()
