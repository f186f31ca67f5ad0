"""Fixtures of the HA pair tests: ``make_pair(**spec)`` builds the namespaces of
tests/integration/ha (pairlab.HaPair) and, pass or fail, stops every client load, kills both
daemons (continuing a SIGSTOPped one first) and removes every namespace; when the test failed, the
daemons' last log lines are printed (pytest shows them with the failure)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from pairlab import HaPair, MakePair, Spec

from hacontrol.lab.netns import NetnsLab

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def make_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakePair]:
    made: list[tuple[NetnsLab, HaPair]] = []

    def make(**spec: object) -> HaPair:
        lab = NetnsLab()
        pair = HaPair(lab, tmp_path, Spec(**spec))  # type: ignore[arg-type]
        made.append((lab, pair))
        pair.build()
        return pair

    try:
        yield make
    finally:
        for lab, pair in made:
            try:
                pair.close()
                if request.node.stash.get(FAILED, False):
                    for name in pair.daemons:
                        print(pair.tail(name, 60))
            finally:
                lab.close()
