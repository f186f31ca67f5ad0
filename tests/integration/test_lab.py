"""``hacontrol lab`` end to end (root): the first form's JSON report, and cleanup on interruption.

Runs the lab as a user would (``python -m hacontrol lab ...``) and checks what it reports against
what must be true, then that no namespace, process or work directory of it is left behind: after a
normal run and after SIGINT / SIGTERM in the middle of one.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]

SERVERS = {"rs1", "rs2", "rs3"}
LAB = [sys.executable, "-m", "hacontrol", "lab"]


def namespaces(pid: int) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"hc{pid}x")]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if text.encode() in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return found


def run_lab(*args: str) -> dict[str, Any]:
    """Run the lab to its end; its JSON report (after checking it cleaned up)."""
    p = subprocess.Popen(
        [*LAB, *args, "--json", "--requests", "9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
    assert p.returncode == 0, err[-4000:]
    rep: dict[str, Any] = json.loads(out)
    assert rep["ok"] is True and rep["error"] is None
    assert rep["dataplane"] in ("nftables", "ipvs")
    assert rep["cleanup"] == {"namespaces_left": 0}
    assert namespaces(p.pid) == []
    return rep


def check_real_server_steps(steps: dict[str, dict[str, Any]]) -> None:
    for name in ("round-robin", "round-robin again"):
        rr = steps[name]
        assert rr["failed"] == 0
        assert set(rr["responses"]) == SERVERS  # every server answered
        assert rr["served"] == rr["responses"]  # the servers' own counts agree with the client
        assert sum(rr["served"].values()) == 9
        assert rr["spread"] <= 1  # round-robin

    killed = steps["rs2 killed"]
    assert killed["removed"] is True
    assert 0 < killed["health_down_s"] <= killed["detection_s"] < 15
    assert killed["failed_after_removal"] == 0  # it has left the traffic too
    assert "rs2" not in killed["responses"]  # a killed server answers nothing
    assert {"rs1", "rs3"} <= set(killed["responses"])  # the others carry the traffic
    assert killed["failed"] > 0  # requests sent to rs2 before the daemon saw it fail

    back = steps["rs2 restarted"]
    assert back["back"] is True
    assert 0 < back["back_in_table_s"] < 15
    assert back["responses"].get("rs2", 0) > 0
    assert back["failed"] == 0  # adding a server back loses nothing


def test_first_form_report() -> None:
    rep = run_lab("--single")
    assert rep["form"] == "single"
    steps = {s["step"]: s["measured"] for s in rep["steps"]}
    assert list(steps) == [
        "build", "start", "round-robin", "rs2 killed", "rs2 restarted", "round-robin again",
    ]  # fmt: skip
    check_real_server_steps(steps)


def test_two_director_form_report() -> None:
    rep = run_lab("--ha")
    assert rep["form"] == "pair"
    steps = {s["step"]: s["measured"] for s in rep["steps"]}
    assert list(steps) == [
        "build", "start", "round-robin", "rs2 killed", "rs2 restarted", "power loss",
        "power back", "handover", "preempt back", "round-robin again",
    ]  # fmt: skip
    check_real_server_steps(steps)
    assert steps["round-robin"]["vip_at"] == "director-a"  # the client's ARP entry: a's MAC

    loss = steps["power loss"]
    assert loss["vip_at"] == "director-b"
    # heartbeats every 200 ms, dead after 3: b takes over well within a couple of seconds
    assert 0 < loss["takeover_s"] < 3
    assert 0 < loss["outage_s"] < 3
    assert loss["failed"] == sum(loss.get("errors", {}).values())

    back = steps["power back"]
    assert back["vip_at"] == "director-a"
    assert back["preempted_s"] >= 2.0  # preempt_delay

    handover = steps["handover"]
    assert handover["vip_at"] == "director-b"
    assert handover["longest_gap_s"] < 1.0  # make before break: no outage a client notices
    assert steps["preempt back"]["vip_at"] == "director-a"
    assert steps["round-robin again"]["vip_at"] == "director-a"


@pytest.mark.parametrize(
    ("form", "sig", "running"),
    [
        ("--single", signal.SIGINT, "all real servers up"),
        ("--ha", signal.SIGTERM, "director-a active"),
    ],
)
def test_interrupted_lab_removes_everything(form: str, sig: signal.Signals, running: str) -> None:
    p = subprocess.Popen(
        [*LAB, form, "--requests", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    workdir = None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        # interrupt while the lab is running: namespaces built, the daemon(s) serving
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert p.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if m := re.search(r"work directory \(configs, logs\) (\S+)", line):
                workdir = m.group(1)
            if running in line:
                break
        assert workdir is not None and Path(workdir).is_dir(), "".join(seen)
        assert namespaces(p.pid), "the lab should be running"
        assert processes_mentioning(workdir), "its daemon(s) should be running"
        p.send_signal(sig)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    while not lines.empty():
        seen.append(lines.get())
    text = "".join(seen)
    assert rc == 130, text
    assert "INTERRUPTED" in text
    assert namespaces(p.pid) == []
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []  # daemons, real servers and loops are gone
