"""Host side of the IPVS suite: boot the qemu guest ONCE and run tests/ipvs inside it.

The host kernel has no IPVS; the guest (tests/vm, docs/testing.md) boots Debian's stock kernel
with the host's / shared read-only, so ``sys.executable`` and the checkout are the same inside.
Every in-guest test's result is read back from a junit XML file written to a read-write share and
reported here: this test fails listing the failed ones (a skipped in-guest test is a failure too:
inside the guest nothing should be missing). No qemu or a failed build is a skip with the reason.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.vm

GUEST_TIMEOUT = 900  # seconds for the whole in-guest suite under TCG emulation


def _harness() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "vm" / "vmharness.py"
    spec = importlib.util.spec_from_file_location("hacontrol_vmharness", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ipvs_suite_in_guest(tmp_path: Path) -> None:
    vm = _harness()
    try:
        vm.ensure_built()
    except vm.VmUnavailable as e:
        pytest.skip(f"IPVS VM unavailable: {e}")
    xml = tmp_path / "out" / "ipvs.xml"
    xml.parent.mkdir()
    tree = vm.snapshot_tree(tmp_path / "src")  # host edits during the boot cannot tear files
    started = time.monotonic()
    r = vm.run(
        [
            sys.executable, "-m", "pytest", "tests/ipvs", "-m", "ipvs", "-p", "no:cacheprovider",
            "-v", "-rA", f"--junitxml={xml}", "-o", "junit_family=xunit1",
        ],
        rw=[xml.parent],
        timeout=GUEST_TIMEOUT,
        cwd=tree,
    )  # fmt: skip
    wall = time.monotonic() - started
    print(r.stdout)
    print(f"[vm] guest exit status {r.returncode}, wall {wall:.1f}s")
    if r.returncode in (124, 125) and not xml.exists():
        if r.returncode == 125 and "did not report" in r.stdout:
            pytest.skip(f"qemu could not run the guest here: {r.stdout.strip()[-300:]}")
        pytest.fail(f"the guest timed out or died (exit {r.returncode}): {r.stdout[-2000:]}")
    assert r.returncode != 120, "modprobe of the IPVS modules failed in the guest"
    assert xml.exists(), f"no junit XML from the guest (exit {r.returncode})"
    results = vm.junit_results(xml)
    for c in results:
        print(f"[guest] {c.outcome.upper():7} {c.seconds:6.1f}s {c.name}")
    bad = [c for c in results if c.outcome != "passed"]
    assert results, "the guest collected no IPVS tests"
    assert not bad, "in-guest failures:\n" + "\n".join(
        f"{c.outcome}: {c.name}: {c.message[:500]}" for c in bad
    )
    assert r.returncode == 0, f"guest pytest exit {r.returncode} though every case passed"
