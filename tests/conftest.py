"""Shared pytest fixtures: root gating for real-kernel tests, what "cannot run here" means under
CI (a failure, never a skip), and a namespace lab that always cleans up after itself.

CI is ``CI=true`` in the environment (``.ci/run`` sets it). There, a test that cannot run because
something is missing (root, qemu, a header) fails with the reason; elsewhere it is skipped with the
reason, and the IPVS guest suite's skip is repeated in a banner at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import NoReturn

import pytest

from hacontrol.lab.netns import NetnsLab, cleanup_stale


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    return None


def in_ci() -> bool:
    """True under CI (``CI`` set to true/1/yes, as ``.ci/run`` does)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _root_reason()
    if reason is None:
        return
    if in_ci() and any("root" in i.keywords or "vm" in i.keywords for i in items):
        raise pytest.UsageError(f"CI=true but the root and vm tests cannot run: {reason}")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "root" in item.keywords or "vm" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    if _root_reason() is None:
        cleanup_stale()


@pytest.fixture(scope="session")
def unavailable() -> Callable[[str], NoReturn]:
    """``unavailable(reason)`` for a test that cannot run here: a failure under CI (CI must not
    pass without it), a skip with the reason elsewhere."""

    def give_up(reason: str) -> NoReturn:
        if in_ci():
            pytest.fail(f"CI=true requires this test, but: {reason}", pytrace=False)
        pytest.skip(reason)

    return give_up


SKIPPED_VM: list[str] = []  # "nodeid: reason" of every skipped vm test, for the closing banner


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "vm" in report.keywords:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        SKIPPED_VM.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SKIPPED_VM:
        tr = terminalreporter
        tr.write_sep("!", "IPVS GUEST SUITE NOT RUN", red=True, bold=True)
        for line in SKIPPED_VM:
            tr.write_line(f"SKIPPED {line}", red=True, bold=True)
        tr.write_line(
            "tests/ipvs ran nowhere: this run says nothing about the IPVS data plane "
            "(CI=true makes this a failure).",
            red=True,
            bold=True,
        )


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A fresh NetnsLab; every namespace and process it made is removed, pass or fail."""
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.close()
