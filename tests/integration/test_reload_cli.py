"""``systemctl reload`` fails when the daemon refuses the file: the unit's ExecReload command,
run against the real ``hacontrol run`` process (memory data plane, needs no root), exits with the
daemon's verdict.

The command is taken from deploy/hacontrol.service with the package's paths replaced by this
test's (socket, token). A good file: exit 0. A file with a bad field or one that is not even
YAML: exit 1, every ``file:line: field: reason`` printed, and the daemon logs
``config.reload result=error`` for each and keeps running its config. ``reload -c FILE`` (the
interactive form) reads only the file's ``api`` section, so a bad field still reaches the daemon;
a file that is not YAML cannot name the daemon and is refused by the CLI itself, saying so.
A wrong token: exit 1 (HTTP 401). No daemon: exit 2.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from hacontrol.lab.scenario import log_events as events

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "hacontrol.service"
TIMEOUT = 30.0

GOOD = """
node: {{name: rl}}
api: {{listen: "unix:{sock}", token_file: {token}}}
dataplane: {{kind: memory, state_dir: {state}}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: 192.0.2.10
    port: {port}
    check: {{type: none}}
    real_servers:
      - {{address: 198.51.100.2, port: 80, weight: {weight}}}
"""


def exec_reload(sock: Path, token: Path) -> list[str]:
    """The unit's ExecReload= argv, with this test's socket and token and this interpreter."""
    lines = [x for x in UNIT.read_text().splitlines() if x.startswith("ExecReload=")]
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0].removeprefix("ExecReload="))
    assert argv[0] == "/usr/bin/hacontrol" and "-c" not in argv, argv  # never the judged file
    swap = {"unix:/run/hacontrol/api.sock": f"unix:{sock}", "/etc/hacontrol/api.token": str(token)}
    assert set(swap) <= set(argv), argv
    return [sys.executable, "-m", "hacontrol", *[swap.get(a, a) for a in argv[1:]]]


def test_exec_reload_names_what_the_packaged_config_uses() -> None:
    """The unit's address and token are those of the example the package installs."""
    example = yaml.safe_load((REPO / "deploy" / "etc-hacontrol" / "hacontrol.yaml").read_text())
    argv = exec_reload(Path("/run/hacontrol/api.sock"), Path("/etc/hacontrol/api.token"))
    api = example["api"]
    assert argv[argv.index("--api") + 1] == api["listen"]
    assert argv[argv.index("--token-file") + 1] == api["token_file"]


def cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)




def wait_for(cond: Any, what: str) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (v := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return v


def test_exec_reload_exits_with_the_daemons_verdict(tmp_path: Path) -> None:
    sock, token, cfg, log = (tmp_path / n for n in ("api.sock", "api.token", "h.yaml", "d.log"))
    token.write_text("s3cret-token\n")
    token.chmod(0o640)

    def write(port: str = "80", weight: int = 1, tail: str = "") -> None:
        cfg.write_text(GOOD.format(sock=sock, token=token, state=tmp_path / "state", port=port,
                                   weight=weight) + tail)  # fmt: skip

    write()
    reload = exec_reload(sock, token)
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "hacontrol", "run", "-c", str(cfg)],
                             stdout=out, stderr=out, start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: events(log, "daemon.start") or p.poll() is not None, "daemon.start")
        assert p.poll() is None, log.read_text()
        digest = events(log, "daemon.start")[0]["digest"]

        # a good file: 0
        write(weight=3)
        r = cli(reload)
        assert r.returncode == 0 and r.stdout.startswith("ok: reloaded, digest"), r
        ok = events(log, "config.reload")
        assert [e["result"] for e in ok] == ["ok"] and ok[0]["changed"] is True
        digest = ok[0]["digest"]

        # a bad field: 1, the daemon's lines printed, its verdict logged, its config kept
        write(port="eighty", weight=3)
        r = cli(reload)
        assert r.returncode == 1, r
        assert "HTTP 422: config refused" in r.stderr
        assert f"{cfg}:9: services[0].port: must be an integer" in r.stderr, r.stderr
        refused = events(log, "config.reload")[-1]
        assert refused["result"] == "error" and refused["kept_digest"] == digest
        assert any("services[0].port" in e for e in refused["errors"])

        # not even YAML: still the daemon's verdict
        write(tail="  : [\n")
        r = cli(reload)
        assert r.returncode == 1 and "HTTP 422" in r.stderr and str(cfg) in r.stderr, r
        assert len([e for e in events(log, "config.reload") if e["result"] == "error"]) == 2

        # the interactive form: -c reads the api section only
        c_form = [sys.executable, "-m", "hacontrol", "reload", "-c", str(cfg)]
        r = cli(c_form)
        assert r.returncode == 1 and "cannot find the API address" in r.stderr, r
        assert len(events(log, "config.reload")) == 3  # the daemon never heard of that one
        write(port="eighty")
        r = cli(c_form)
        assert r.returncode == 1 and "HTTP 422" in r.stderr and "services[0].port" in r.stderr
        write(weight=5)
        r = cli(c_form)
        assert r.returncode == 0 and r.stdout.startswith("ok: reloaded"), r

        # a wrong token: 1
        bad = tmp_path / "bad.token"
        bad.write_text("nope\n")
        r = cli([str(bad) if a == str(token) else a for a in reload])
        assert r.returncode == 1 and "HTTP 401" in r.stderr, r
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(timeout=TIMEOUT) == 0
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
            print("--- daemon log (tail) ---\n" + "\n".join(log.read_text().splitlines()[-20:]))

    # no daemon: 2
    r = cli(reload)
    assert r.returncode == 2 and "cannot reach the daemon" in r.stderr, r
