"""Read, report and (when ``host.set_sysctls``) write the sysctls the config needs.

``check_sysctls`` reads each needed key under ``/proc/sys`` (of the calling thread's network
namespace) and logs every mismatch as a ``host.sysctl`` warning (key, want, have, reason);
``set_sysctls`` writes the mismatched ones and reads them back (``host.sysctl_set``, or
``host.sysctl_error`` with the OS error: a unit with ``ProtectKernelTunables=yes`` sees
``/proc/sys`` read-only, then the packaged sysctl.d drop-in is the way). ``host_check`` is what
the daemon runs at start and on reload; the status calls ``check_sysctls(..., report=False)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hacontrol import logs
from hacontrol.host.needs import SysctlNeed, required_sysctls
from hacontrol.model import Config

PROC_SYS = "/proc/sys"

log = logs.get("hacontrol.host.sysctl")


@dataclass(frozen=True)
class SysctlCheck:
    """A needed setting and what the kernel has (``have`` None: the key does not exist)."""

    key: str
    want: str
    have: str | None
    why: str
    error: str | None = None  # why setting it failed, if it was tried

    @property
    def ok(self) -> bool:
        return self.have == self.want

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "want": self.want,
            "have": self.have,
            "ok": self.ok,
            "reason": self.why,
            "error": self.error,
        }


def sysctl_path(key: str, root: str = PROC_SYS) -> str:
    return os.path.join(root, *key.split("."))


def read_sysctl(key: str, root: str = PROC_SYS) -> str | None:
    """The value of ``key`` (whitespace collapsed), or None if it does not exist."""
    try:
        with open(sysctl_path(key, root), encoding="ascii") as f:
            return " ".join(f.read().split())
    except (FileNotFoundError, NotADirectoryError):
        return None


def _missing_hint(key: str) -> str:
    return "ip_vs is not loaded" if ".vs." in key else "no such key in this kernel"


def check_sysctls(
    needs: Sequence[SysctlNeed], root: str = PROC_SYS, *, report: bool = True
) -> list[SysctlCheck]:
    """Read every needed key; with ``report``, log each mismatch (``host.sysctl``)."""
    out = []
    for n in needs:
        try:
            have = read_sysctl(n.key, root)
        except OSError as e:
            have = None
            err: str | None = f"cannot read: {e.strerror or e}"
        else:
            err = None if have is not None else _missing_hint(n.key)
        check = SysctlCheck(n.key, n.want, have, n.why, err if have is None else None)
        out.append(check)
        if report and not check.ok:
            log.warning(
                "host.sysctl", key=n.key, want=n.want, have=have, reason=n.why, error=check.error
            )
    return out


def set_sysctls(checks: Sequence[SysctlCheck], root: str = PROC_SYS) -> list[SysctlCheck]:
    """Write each mismatched setting and read it back; the checks as they are afterwards."""
    out = []
    for c in checks:
        if c.ok:
            out.append(c)
            continue
        try:
            with open(sysctl_path(c.key, root), "w", encoding="ascii") as f:
                f.write(c.want + "\n")
            have = read_sysctl(c.key, root)
        except OSError as e:
            why = e.strerror or str(e)
            log.error(
                "host.sysctl_error", key=c.key, want=c.want, have=c.have, reason=c.why, error=why
            )
            out.append(SysctlCheck(c.key, c.want, c.have, c.why, f"cannot set: {why}"))
            continue
        done = SysctlCheck(c.key, c.want, have, c.why)
        if done.ok:
            log.info("host.sysctl_set", key=c.key, old=c.have, new=have, reason=c.why)
        else:
            log.error(
                "host.sysctl_error",
                key=c.key,
                want=c.want,
                have=have,
                reason=c.why,
                error="did not stick",
            )
        out.append(done)
    return out


def host_check(config: Config, plane: str, root: str = PROC_SYS) -> list[SysctlCheck]:
    """At start / reload: check what ``config`` needs on ``plane``, set it if the config says so."""
    checks = check_sysctls(required_sysctls(config, plane), root)
    if config.host.set_sysctls and not all(c.ok for c in checks):
        checks = set_sysctls(checks, root)
    return checks
