"""Run a bench script inside the IPVS qemu guest (tests/vm) when this host has no IPVS.

``in_vm(script, argv)`` boots the guest once on a snapshot of the tree (edits made during the
boot cannot tear files), re-runs ``bench/<script>`` there with the same arguments, writes the
``--json`` file in a folder of its own shared read-write and copies it back, and prints the
guest's output.
Used by ipvs_apply_bench.py and ipvs_event_bench.py.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def in_vm(script: str, argv: list[str], timeout: float = 1800) -> int:
    """Re-run ``bench/<script>`` inside the tests/vm guest (one boot); the exit code."""
    path = REPO / "tests" / "vm" / "vmharness.py"
    spec = importlib.util.spec_from_file_location("hacontrol_vmharness", path)
    assert spec is not None and spec.loader is not None
    vm = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = vm  # dataclasses look their module up there
    spec.loader.exec_module(vm)
    try:
        vm.ensure_built()
    except vm.VmUnavailable as e:
        print(f"cannot run: no IPVS here and {e}", file=sys.stderr)
        return 2
    argv = list(argv)
    print(f"[bench] no IPVS on this host: running in the qemu guest ({vm.cache_dir()})", flush=True)
    with tempfile.TemporaryDirectory(prefix="hacontrol-bench-") as tmp:
        # the JSON comes back through a folder of its own: sharing the asked file's folder
        # (often /tmp) would put the guest's /tmp on 9p, where no unix socket can be made
        share, out = Path(tmp) / "out", None
        share.mkdir()
        if "--json" in argv:
            out = Path(argv[argv.index("--json") + 1]).resolve()
            argv[argv.index("--json") + 1] = str(share / out.name)
        tree = vm.snapshot_tree(Path(tmp) / "src")
        r = vm.run([sys.executable, str(tree / "bench" / script), *argv], rw=[share],
                   timeout=timeout, cwd=tree)  # fmt: skip
        if out is not None and (share / out.name).exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(share / out.name, out)
    print(r.stdout, end="")
    return int(r.returncode)
