"""Host side of the IPVS suite: boot the qemu guest ONCE and run tests/ipvs inside it.

The host kernel has no IPVS; the guest (tests/vm, docs/testing.md) boots Debian's stock kernel
with the host's / shared read-only, so ``sys.executable`` and the checkout are the same inside.

The guest runs exactly the test ids the host collects under tests/ipvs (collected here, in a
subprocess, on the same snapshot of the tree the guest sees), and every id's result is read back
from a junit XML file written to a read-write share: an id with no result, a result for an id not
asked for, a failure, an error and a skip each fail this test, named.

Under CI (``CI=true``, set by ``.ci/run``) this test is required: no qemu, a failed build, a guest
that cannot boot or ``HACONTROL_SKIP_VM=1`` fail it with the reason. Elsewhere those are a skip
with the reason, repeated in a banner at the end of the run (tests/conftest.py). A guest that dies
or times out after pytest started in it is a failure everywhere.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

pytestmark = pytest.mark.vm

GUEST_TIMEOUT = 1800  # seconds for the whole in-guest suite under TCG emulation (~8 min quiet)
SKIP_ENV = "HACONTROL_SKIP_VM"


def _harness() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "vm" / "vmharness.py"
    spec = importlib.util.spec_from_file_location("hacontrol_vmharness", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _tail(text: str, n: int = 2000) -> str:
    return text.strip()[-n:]


def test_ipvs_suite_in_guest(tmp_path: Path, unavailable: Callable[[str], NoReturn]) -> None:
    if os.environ.get(SKIP_ENV, "").strip() not in ("", "0"):
        unavailable(f"{SKIP_ENV}={os.environ[SKIP_ENV]}: the IPVS guest suite was not run")
    vm = _harness()
    try:
        vm.ensure_built()
    except vm.VmUnavailable as e:
        unavailable(f"IPVS VM unavailable: {e}")
    tree = vm.snapshot_tree(tmp_path / "src")  # host edits during the boot cannot tear files
    try:
        ids = vm.collect_ids(tree)
    except vm.CollectError as e:
        pytest.fail(f"host collection of tests/ipvs failed: {e}", pytrace=False)
    print(f"[vm] the host collected {len(ids)} tests under tests/ipvs; the guest runs those")
    xml = tmp_path / "out" / "ipvs.xml"
    xml.parent.mkdir()
    started = time.monotonic()
    r = vm.run(
        [
            sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rA",
            f"--junitxml={xml}", "-o", "junit_family=xunit1", *ids,
        ],
        rw=[xml.parent],
        timeout=GUEST_TIMEOUT,
        cwd=tree,
    )  # fmt: skip
    wall = time.monotonic() - started
    print(r.stdout)
    print(f"[vm] guest exit status {r.returncode}, wall {wall:.1f}s")
    began = vm.pytest_started(r.stdout)
    if r.returncode == 125 and not began:
        unavailable(f"qemu could not boot the guest here (exit 125): {_tail(r.stdout, 300)}")
    if r.returncode == 124:
        pytest.fail(f"the guest timed out after {GUEST_TIMEOUT}s: {_tail(r.stdout)}")
    if r.returncode == 125:
        pytest.fail(f"the guest died after pytest started (exit 125): {_tail(r.stdout)}")
    if r.returncode == 120:
        pytest.fail(f"modprobe of the IPVS modules failed in the guest: {_tail(r.stdout)}")
    if not xml.exists():
        pytest.fail(f"no junit XML from the guest (exit {r.returncode}): {_tail(r.stdout)}")
    results = vm.junit_results(xml)
    for c in results:
        print(f"[guest] {c.outcome.upper():7} {c.seconds:6.1f}s {c.name}")
    problems = vm.compare(ids, results)
    assert not problems, "the guest run differs from what the host collected:\n" + "\n".join(
        problems
    )
    assert r.returncode == 0, f"guest pytest exit {r.returncode} though every case passed"
