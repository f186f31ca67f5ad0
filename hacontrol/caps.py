"""Which Linux capabilities the daemon holds and which its config needs: the check at start.

The daemon runs as an unprivileged user holding only CAP_NET_ADMIN and CAP_NET_RAW (the systemd
unit grants them as ambient capabilities). Without one of them it would start and then fail
half-way: the first VIP move or gratuitous ARP after a failover, the first nft batch. So it looks
before it touches anything: ``decode`` turns the ``CapEff`` mask of ``/proc/self/status`` into
capability names (pure), ``needed`` says which capabilities a config needs and why (pure; a dry
run needs none, the memory data plane none for itself), and ``refusal`` compares the two and
words the ``daemon.start`` error: "missing capabilities: CAP_NET_RAW (gratuitous ARP)".
"""

from __future__ import annotations

from collections.abc import Iterable

from hacontrol import logs
from hacontrol.model import Config

__all__ = ["NAMES", "check", "decode", "effective", "needed", "refusal", "refused"]

# capability numbers of linux/capability.h, in order
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

PROC_STATUS = "/proc/self/status"

log = logs.get("hacontrol.daemon")


def decode(mask: str) -> frozenset[str]:
    """The capability names of a hex mask as ``/proc/PID/status`` shows it (``CapEff:``);
    a bit this table does not know becomes ``CAP_<n>``. ValueError: not a hex number."""
    bits = int(mask.strip(), 16)
    if bits < 0:
        raise ValueError(f"negative capability mask {mask!r}")
    out = set()
    n = 0
    while bits:
        if bits & 1:
            out.add(NAMES[n] if n < len(NAMES) else f"CAP_{n}")
        bits >>= 1
        n += 1
    return frozenset(out)


def effective(status_text: str) -> frozenset[str]:
    """The effective set from the text of ``/proc/PID/status``; ValueError without ``CapEff``."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return decode(value)
    raise ValueError("no CapEff line")


def needed(cfg: Config, kind: str, dry_run: bool) -> dict[str, list[str]]:
    """Capability -> what needs it, for ``cfg`` on the data plane ``kind`` (ipvs | nftables |
    memory, or auto: either of the first two). A dry run touches nothing in the kernel: nothing.
    ``host.set_sysctls`` writes /proc/sys/net, which CAP_NET_ADMIN allows in the network
    namespace the daemon runs in."""
    need: dict[str, list[str]] = {}

    def add(cap: str, why: str) -> None:
        need.setdefault(cap, []).append(why)

    if dry_run:
        return need
    if kind == "ipvs":
        add("CAP_NET_ADMIN", "IPVS table")
    elif kind == "nftables":
        add("CAP_NET_ADMIN", "nftables table")
    elif kind == "auto":
        add("CAP_NET_ADMIN", "IPVS or nftables table")
    if cfg.nat.snat:
        add("CAP_NET_ADMIN", "SNAT table")
    if cfg.host.set_sysctls:
        add("CAP_NET_ADMIN", "sysctls")
    ha = cfg.ha
    if ha is not None:
        add("CAP_NET_ADMIN", "VIP addresses")
        versions = {v.address.version for v in ha.vips}
        if 4 in versions:
            add("CAP_NET_RAW", "gratuitous ARP")
        if 6 in versions:
            add("CAP_NET_RAW", "unsolicited neighbour advertisements")
        if ha.track.gateway is not None:
            add("CAP_NET_RAW", "gateway pings")
        if ha.sync is not None and kind == "ipvs":
            add("CAP_NET_ADMIN", "IPVS connection sync")
    return need


def refusal(need: dict[str, list[str]], have: Iterable[str]) -> str | None:
    """The reason to refuse the start ("missing capabilities: CAP_NET_RAW (gratuitous ARP)"),
    or None when every needed capability is held."""
    held = set(have)
    missing = [f"{cap} ({', '.join(why)})" for cap, why in sorted(need.items()) if cap not in held]
    return "missing capabilities: " + "; ".join(missing) if missing else None


def check(cfg: Config, kind: str, dry_run: bool, path: str = PROC_STATUS) -> str | None:
    """``refusal`` for this process (reads ``path``); an unreadable status is no refusal (the
    kernel then answers each operation itself)."""
    need = needed(cfg, kind, dry_run)
    if not need:
        return None
    try:
        with open(path) as f:
            have = effective(f.read())
    except (OSError, ValueError) as exc:
        log.warning("daemon.capabilities", path=path, reason=f"cannot read them: {exc}")
        return None
    return refusal(need, have)


def refused(cfg: Config, kind: str, dry_run: bool, path: str = PROC_STATUS) -> bool:
    """``check``; a refusal is logged as ``daemon.start`` ``result=error``."""
    reason = check(cfg, kind, dry_run, path)
    if reason is not None:
        log.error("daemon.start", result="error", reason=reason, config=cfg.source)
    return reason is not None
