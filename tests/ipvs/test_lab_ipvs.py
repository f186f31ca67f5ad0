"""``hacontrol lab`` on a kernel with IPVS (in the guest): ``dataplane: auto`` picks IPVS and the
first form shows everything it shows on nftables (each step checks itself: ``ok`` is only true when
every real server answered round-robin, rs2 left the table and the traffic, and came back)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ipvs


def test_lab_first_form_runs_on_ipvs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hacontrol", "lab", "--single", "--json", "--requests", "6"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads(r.stdout)
    assert rep["ok"] is True
    assert rep["dataplane"] == "ipvs"
    steps = {s["step"]: s["measured"] for s in rep["steps"]}
    assert steps["round-robin"]["served"] == {"rs1": 2, "rs2": 2, "rs3": 2}
    assert steps["rs2 killed"]["failed_after_removal"] == 0
    assert steps["rs2 restarted"]["responses"].get("rs2", 0) > 0
    assert steps["round-robin again"]["served"] == {"rs1": 2, "rs2": 2, "rs3": 2}
    assert rep["cleanup"] == {"namespaces_left": 0}
