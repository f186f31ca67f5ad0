"""The Debian package, installed into a fresh Debian 12 root as an operator would (root).

``scripts/package.sh`` builds ``dist/hacontrol_VERSION_ARCH.deb`` (reused when it is newer than
every file it is made from); ``tests/pkg/fresh_root.sh`` unpacks a fresh debootstrap minbase root
(cached tarball under /var/tmp) in which nothing of the package's dependencies is installed:
no python, no nftables. In it, in order:

- ``apt-get install systemd`` (every director has it; not running: a chroot), then
  ``apt-get install ./hacontrol_*.deb``, so the Depends must be complete and right;
- the user and group, /etc/hacontrol with a generated HA key and API token (owners, modes),
  ``hacontrol version`` and ``hacontrol check -c /etc/hacontrol/hacontrol.yaml`` as root and as
  the service user, ``systemd-analyze verify`` and ``security`` of the installed unit;
- a reinstall keeps the keys;
- ``apt-get remove`` leaves the config, keys and user; ``dpkg --purge`` removes the config, the
  keys and /var/lib/hacontrol, keeps the user, and leaves no file of the package behind.

Needs the Debian mirror this machine's apt uses (the root's apt reaches it the same way).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
FRESH_ROOT = REPO / "tests" / "pkg" / "fresh_root.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
RUNS = Path(os.environ.get("HACONTROL_ROOT_CACHE", "/var/tmp/hacontrol-fresh-root")) / "runs"
INPUTS = ("hacontrol", "deploy", "packaging", "docs", "pyproject.toml", "scripts/package.sh")
CONF = "/etc/hacontrol/hacontrol.yaml"


def _newest_input() -> float:
    newest = 0.0
    for name in INPUTS:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        newest = max([newest, *(p.stat().st_mtime for p in files if "__pycache__" not in p.parts)])
    return newest


@pytest.fixture(scope="module")
def deb() -> Path:
    """dist/hacontrol_VERSION_ARCH.deb, built now unless it is newer than all its inputs."""
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = REPO / "dist" / f"hacontrol_{VERSION}_{arch}.deb"
    if not path.exists() or path.stat().st_mtime < _newest_input():
        subprocess.run(["bash", str(REPO / "scripts" / "package.sh")], check=True, timeout=600)
    assert path.exists()
    return path


@dataclass
class Root:
    """A fresh Debian root and a way to run commands in it."""

    path: Path

    def run(self, script: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            ["bash", str(FRESH_ROOT), "exec", str(self.path), "/bin/bash", "-ec", script],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"in the fresh root: {script!r} exited {proc.returncode}:\n"
                        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")  # fmt: skip
        return proc.stdout

    def stat(self, path: str) -> tuple[str, str, str]:
        """(owner, group, octal mode) of a path inside."""
        owner, group, mode = self.run(f"stat -c '%U %G %a' {path}").split()
        return owner, group, mode

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path / path.lstrip("/"))


@pytest.fixture(scope="module")
def root(deb: Path) -> Iterator[Root]:
    """A fresh root with systemd installed (not running) and then the package, via apt."""
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / f"root-{os.getpid()}"
    subprocess.run(["bash", str(FRESH_ROOT), "destroy", str(path)], check=True)
    subprocess.run(["bash", str(FRESH_ROOT), "create", str(path)], check=True, timeout=600)
    try:
        shutil.copy(deb, path / "tmp" / deb.name)
        r = Root(path)
        r.run("apt-get update -q")
        assert r.run("dpkg-query -W -f '${db:Status-Status}' python3.11 nftables", check=False) \
            in ("", "not-installed")  # fmt: skip
        r.run("apt-get install -y -q systemd")
        out = r.run(f"apt-get install -y -q /tmp/{deb.name}")
        assert "Setting up hacontrol" in out
        yield r
    finally:
        subprocess.run(["bash", str(FRESH_ROOT), "destroy", str(path)], check=True)


def test_the_package_runs_as_installed(root: Root) -> None:
    assert root.run("readlink /usr/bin/hacontrol").strip() == "/opt/hacontrol/bin/hacontrol"
    assert root.run("hacontrol version").strip() == f"hacontrol {VERSION}"
    assert root.run(f"hacontrol check -c {CONF}").startswith("ok: 1 services, 3 real servers")
    # The venv runs on the root's own Debian python3.11 and nothing of the system's site-packages.
    assert root.run("readlink -f /opt/hacontrol/bin/python").strip() == "/usr/bin/python3.11"
    assert "include-system-site-packages = false" in root.run("cat /opt/hacontrol/pyvenv.cfg")
    # The libraries' compiled (and stripped) extensions load on the root's interpreter.
    root.run("/opt/hacontrol/bin/python -c 'import aiohttp._http_parser, uvloop.loop, "
             "multidict._multidict, frozenlist._frozenlist, propcache._helpers_c; "
             "from yaml import CSafeLoader'")  # fmt: skip
    # The nftables data plane and the HA hand-off run `nft`: a dependency, installed.
    assert root.run("command -v nft").strip() == "/usr/sbin/nft"


def test_user_config_and_secrets(root: Root) -> None:
    entry = root.run("getent passwd hacontrol").strip()
    name, _pw, uid, _gid, _gecos, home, shell = entry.split(":")
    assert (name, home, shell) == ("hacontrol", "/var/lib/hacontrol", "/usr/sbin/nologin")
    assert int(uid) < 1000  # a system account
    assert root.run("getent group hacontrol").startswith("hacontrol:")
    assert root.stat("/etc/hacontrol") == ("root", "hacontrol", "750")
    assert root.stat(CONF) == ("root", "hacontrol", "640")
    assert root.stat("/etc/hacontrol/ha.key") == ("hacontrol", "hacontrol", "600")
    assert root.stat("/etc/hacontrol/api.token") == ("root", "hacontrol", "640")
    assert root.stat("/var/lib/hacontrol") == ("hacontrol", "hacontrol", "750")
    key = root.run("cat /etc/hacontrol/ha.key").strip()
    token = root.run("cat /etc/hacontrol/api.token").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key) and re.fullmatch(r"[0-9a-f]{64}", token)
    assert key != token
    assert root.run("dpkg-query -W -f '${Conffiles}' hacontrol").split()[0] == CONF
    # The service user reads what the daemon reads: the config, the HA key, the token.
    as_user = "setpriv --reuid hacontrol --regid hacontrol --init-groups"
    assert root.run(f"{as_user} hacontrol check -c {CONF}").startswith("ok:")
    root.run(f"{as_user} cat /etc/hacontrol/ha.key /etc/hacontrol/api.token >/dev/null")


def test_boot_time_files_installed(root: Root) -> None:
    modules = root.run("grep -v '^#' /usr/lib/modules-load.d/hacontrol.conf").split()
    assert {"ip_vs", "ip_vs_rr", "ip_vs_wrr", "nf_conntrack"} <= set(modules)
    sysctl = root.run("grep -v '^#' /usr/lib/sysctl.d/60-hacontrol.conf")
    assert "net.ipv4.ip_forward = 1" in sysctl and "net.ipv4.vs.conntrack = 1" in sysctl
    assert "arp_ignore" not in sysctl  # DR's real-server settings are comments only
    assert "/run/hacontrol 0750 hacontrol hacontrol" in " ".join(
        root.run("cat /usr/lib/tmpfiles.d/hacontrol.conf").split()
    )


def test_installed_unit_verifies(root: Root) -> None:
    unit = "/lib/systemd/system/hacontrol.service"
    out = root.run(f"systemd-analyze verify {unit} 2>&1")
    assert out.strip() == "", out
    score = root.run(f"systemd-analyze security --offline=true --threshold=20 {unit}")
    assert "Overall exposure level for hacontrol.service" in score
    # Installed, not enabled: a director must not start on the example config.
    assert not root.exists("/etc/systemd/system/multi-user.target.wants/hacontrol.service")


def test_reinstall_keeps_the_keys(root: Root, deb: Path) -> None:
    before = root.run("cat /etc/hacontrol/ha.key /etc/hacontrol/api.token")
    root.run(f"dpkg -i /tmp/{deb.name}")
    assert root.run("cat /etc/hacontrol/ha.key /etc/hacontrol/api.token") == before


def test_remove_then_purge(root: Root) -> None:
    """Last: it removes the package from the module's root."""
    files = root.run("dpkg-query -L hacontrol").split()
    root.run("apt-get remove -y -q hacontrol")
    assert root.run("dpkg-query -W -f '${db:Status-Abbrev}' hacontrol").strip() == "rc"
    for gone in ("/usr/bin/hacontrol", "/opt/hacontrol", "/lib/systemd/system/hacontrol.service",
                 "/usr/lib/sysctl.d/60-hacontrol.conf", "/usr/lib/modules-load.d/hacontrol.conf"):
        assert not root.exists(gone), gone  # fmt: skip
    for kept in (CONF, "/etc/hacontrol/ha.key", "/etc/hacontrol/api.token", "/var/lib/hacontrol"):
        assert root.exists(kept), kept
    assert root.run("getent passwd hacontrol", check=False).startswith("hacontrol:")

    root.run("dpkg --purge hacontrol")
    assert root.run("dpkg-query -W hacontrol 2>&1", check=False).count("no packages found") == 1
    for gone in ("/etc/hacontrol", "/var/lib/hacontrol", *files):
        if gone in ("/.", "/etc", "/lib", "/lib/systemd", "/lib/systemd/system", "/opt", "/usr",
                    "/usr/bin", "/usr/lib", "/usr/share", "/usr/share/doc", "/usr/lib/tmpfiles.d",
                    "/usr/lib/sysctl.d", "/usr/lib/modules-load.d"):
            continue  # shared directories  # fmt: skip
        assert not root.exists(gone), gone
    # Kept on purpose (Debian's usual choice): files outside the package may still be owned by
    # the account's ids, which a later account must not inherit.
    assert root.run("getent passwd hacontrol").startswith("hacontrol:")
