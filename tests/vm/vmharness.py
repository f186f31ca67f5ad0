"""Host-side helpers for the IPVS test VM: build (or reuse) it, boot it once for one command.

The guest is described in docs/testing.md: Debian's stock kernel under qemu, the host's / shared
read-only (so the guest runs the very interpreter and venv of the caller, ``sys.executable``).
Used by tests/integration/test_ipvs_vm.py and bench/ipvs_apply_bench.py. No pytest import here.

The host test's contract with the guest: ``collect_ids`` lists the test ids the HOST collects
under tests/ipvs, the guest runs exactly those ids, and ``compare`` checks the guest's junit
results against them (an id missing from the results, a result for an id nobody asked for, and
anything but a pass are each a problem named in the failure).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = HERE / "build.sh"
VM_RUN = HERE / "vm-run"
# the modules the in-guest suite needs, loaded before anything else runs
MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_mh", "veth", "dummy")


class VmUnavailable(Exception):
    """qemu cannot run the guest here; the message says precisely why."""


def cache_dir() -> Path:
    return Path(os.environ.get("HACONTROL_VM_DIR", "/var/cache/hacontrol-vm"))


def ensure_built(timeout: float = 900) -> str:
    """Build or reuse the VM; return build.sh's log. VmUnavailable when it cannot be done."""
    if os.geteuid() != 0 and not (cache_dir() / "vm.conf").exists():
        raise VmUnavailable("building the IPVS VM needs root (apt-get); run tests/vm/build.sh")
    try:
        r = subprocess.run(
            ["bash", str(BUILD)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise VmUnavailable(f"tests/vm/build.sh did not finish in {timeout:.0f}s") from e
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise VmUnavailable(f"tests/vm/build.sh failed (exit {r.returncode}): {' | '.join(tail)}")
    if shutil.which("qemu-system-x86_64") is None:
        raise VmUnavailable("qemu-system-x86_64 is not installed")
    return r.stderr


def snapshot_tree(dest: Path, src: Path = REPO) -> Path:
    """Copy the working tree (no .git, no caches) to ``dest`` and return it. The guest reads the
    host's files through a caching 9p mount: a file edited on the host DURING a boot can read
    back torn in the guest, so a long in-guest run works on a snapshot taken before the boot."""
    junk = shutil.ignore_patterns(
        ".git", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".hypothesis", "*.egg-info", ".venv", "results",
    )  # fmt: skip
    shutil.copytree(src, dest, ignore=junk, symlinks=True)
    return dest


def run(
    argv: Sequence[str],
    *,
    rw: Sequence[Path | str] = (),
    timeout: float = 600,
    cwd: Path | str = REPO,
) -> subprocess.CompletedProcess[str]:
    """One boot running ``argv`` (after loading MODULES); stdout+stderr combined in .stdout."""
    args = [str(VM_RUN), "--timeout", str(int(timeout))]
    for d in rw:
        args += ["--rw", str(d)]
    script = f'modprobe -a {" ".join(MODULES)} || exit 120\nexec "$@"'
    args += ["--", "bash", "-c", script, "vm", *map(str, argv)]
    return subprocess.run(
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout + 60,
    )


@dataclass(frozen=True)
class CaseResult:
    name: str  # classname::name
    outcome: str  # passed | failed | error | skipped
    seconds: float
    message: str


def junit_results(path: Path) -> list[CaseResult]:
    """Every test case of a pytest junit XML file."""
    out: list[CaseResult] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (child.get("message") or child.text or "").strip()
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        out.append(CaseResult(name, outcome, float(case.get("time") or 0), message))
    return out


class CollectError(Exception):
    """The host could not collect tests/ipvs; the message carries pytest's output."""


def collect_ids(tree: Path, folder: str = "tests/ipvs", timeout: float = 300) -> list[str]:
    """The test ids pytest collects on this host under ``folder`` of ``tree`` (in a subprocess,
    exactly as the guest will see the same files). CollectError when collection fails (an
    unmarked test under tests/ipvs is a usage error there) or finds nothing."""
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", folder],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    out = (r.stdout + r.stderr).strip()
    if r.returncode != 0:
        raise CollectError(f"pytest --collect-only {folder} failed (exit {r.returncode}):\n{out}")
    ids: list[str] = []
    for line in r.stdout.splitlines():
        if not line.strip():
            break  # the id list ends at the first blank line (summary and warnings follow)
        if "::" in line:
            ids.append(line.strip())
    if not ids:
        raise CollectError(f"pytest collected no test under {folder}:\n{out}")
    return ids


def pytest_started(output: str) -> bool:
    """Whether a guest's console output shows pytest's session header (the boot got that far)."""
    return "test session starts" in output


def junit_name(nodeid: str) -> str:
    """The ``classname::name`` a pytest junit file (xunit1) gives the test ``nodeid``: the path
    as a dotted module, classes joined with dots, the last part (with its parameters) as name."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return f"{'.'.join(names[:-1])}::{names[-1]}"


def compare(ids: Sequence[str], results: Sequence[CaseResult]) -> list[str]:
    """What is wrong with a guest run that was asked to run ``ids``: one line per missing id,
    per result nobody asked for, and per result that is not a pass (a skip included)."""
    want = {junit_name(i): i for i in ids}
    problems: list[str] = []
    seen: set[str] = set()
    for c in results:
        seen.add(c.name)
        if c.name not in want:
            problems.append(f"extra (not collected on the host): {c.name} [{c.outcome}]")
        if c.outcome != "passed":
            problems.append(f"{c.outcome}: {c.name}: {c.message[:500]}")
    missing = [want[n] for n in want if n not in seen]
    problems += [f"missing (collected on the host, no result): {i}" for i in missing]
    return problems
