"""The notify command: argv substitution without a shell, timeout killing the process group,
exit status logged as ``ha.notify``, a missing binary logged and not raised."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.ha.interfaces import Notifier
from hacontrol.ha.notify import CommandNotifier, render_argv


def test_render_argv_substitutes_only_known_fields() -> None:
    got = render_argv(
        ["/bin/x", "{role}", "--why={reason}", "{node}:{other}", "{{role}}"],
        role="active",
        reason="peer dead",
        node="lb1",
    )
    assert got == ["/bin/x", "active", "--why=peer dead", "lb1:{other}", "{active}"]


def test_render_argv_keeps_shell_metacharacters_literal() -> None:
    got = render_argv(["echo", "{reason}"], role="r", reason="$(rm -rf /); `x` | y", node="n")
    assert got == ["echo", "$(rm -rf /); `x` | y"]


def test_implements_the_notifier_protocol() -> None:
    notifier: Notifier = CommandNotifier(["true"], node="n")
    assert notifier is not None


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CommandNotifier(["true"], node="n", timeout=0)


async def test_runs_with_arguments_and_logs_exit_status(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = "import sys; open(sys.argv[1], 'w').write('|'.join(sys.argv[2:])); sys.exit(3)"
    n = CommandNotifier(
        [sys.executable, "-c", script, str(out), "{role}", "{reason}", "{node}"],
        node="lb1",
        timeout=10,
    )
    with capture_logs() as logs:
        res = await n.run("backup", "peer has higher priority; $HOME `id`")
    assert out.read_text() == "backup|peer has higher priority; $HOME `id`|lb1"
    assert res.outcome == "failed" and res.returncode == 3
    ev = [e for e in logs if e["event"] == "ha.notify"]
    assert len(ev) == 1
    assert ev[0]["returncode"] == 3 and ev[0]["outcome"] == "failed"
    assert ev[0]["role"] == "backup"
    assert ev[0]["reason"] == "peer has higher priority; $HOME `id`"


async def test_success_logs_ok_and_output() -> None:
    n = CommandNotifier([sys.executable, "-c", "print('hello', 'x')"], node="n", timeout=10)
    with capture_logs() as logs:
        res = await n.run("active", "elected")
    assert res.outcome == "ok" and res.returncode == 0
    assert res.output == "hello x"
    assert logs[-1]["event"] == "ha.notify" and logs[-1]["outcome"] == "ok"
    assert logs[-1]["log_level"] == "info"


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # the program starts a grandchild (same process group) and both hang
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n"
    )
    n = CommandNotifier([sys.executable, "-c", script], node="n", timeout=1.5, kill_grace=0.2)
    t0 = time.monotonic()
    with capture_logs() as logs:
        res = await n.run("fault", "gateway down")
    elapsed = time.monotonic() - t0
    assert res.outcome == "timeout"
    assert res.returncode is not None and res.returncode < 0  # killed by a signal
    assert elapsed < 10
    assert logs[-1]["event"] == "ha.notify" and logs[-1]["outcome"] == "timeout"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(grandchild):
        if time.monotonic() > deadline:
            pytest.fail(f"grandchild {grandchild} survived the timeout")
        await asyncio.sleep(0.05)


def _gone(pid: int) -> bool:
    """True once ``pid`` is dead (gone, or a zombie waiting for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(") ", 1)[1][0] == "Z"


async def test_missing_binary_is_logged_not_raised(tmp_path: Path) -> None:
    n = CommandNotifier([str(tmp_path / "does-not-exist"), "{role}"], node="n", timeout=5)
    with capture_logs() as logs:
        res = await n.run("active", "elected")
    assert res.outcome == "error"
    assert res.error is not None and "FileNotFoundError" in res.error
    assert logs[-1]["event"] == "ha.notify" and logs[-1]["outcome"] == "error"
    assert logs[-1]["reason"] == "elected"


async def test_empty_argv_is_skipped() -> None:
    n = CommandNotifier([], node="n")
    assert (await n.run("active", "x")).outcome == "skipped"


async def test_runs_are_serialised_in_call_order(tmp_path: Path) -> None:
    out = tmp_path / "order"
    script = (
        "import sys, time\n"
        "time.sleep(0.2 if sys.argv[2] == 'first' else 0)\n"
        "open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')\n"
    )
    n = CommandNotifier([sys.executable, "-c", script, str(out), "{reason}"], node="n", timeout=10)
    await asyncio.gather(n.notify("backup", "first"), n.notify("active", "second"))
    assert out.read_text().split() == ["first", "second"]


def test_from_config() -> None:
    import ipaddress

    from hacontrol.model import Endpoint, HAConfig

    ha = HAConfig(
        bind=Endpoint(ipaddress.ip_address("192.0.2.11"), 5405),
        peers=(),
        secret_file="/k",
        notify=("/bin/n", "{role}"),
        notify_timeout=2.5,
    )
    n = CommandNotifier.from_config(ha, "lb1")
    assert (n.argv, n.node, n.timeout) == (("/bin/n", "{role}"), "lb1", 2.5)
