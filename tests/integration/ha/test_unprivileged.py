"""The real daemon as an unprivileged user holding only CAP_NET_ADMIN and CAP_NET_RAW, as the
systemd unit runs it (setpriv with ambient capabilities instead of systemd), in the HA pair of
tests/integration/ha/pairlab (nftables data plane, one HTTP real server behind the VIP).

The unprivileged daemon also runs under the unit's system-call confinement, without systemd: a
seccomp filter allowing only what the unit's ``SystemCallFilter=`` lines allow (expanded by
``systemd-analyze syscall-filter``; EPERM for the rest, as ``SystemCallErrorNumber=``; libseccomp
through ctypes, with no_new_privs), and MemoryDenyWriteExecute (prctl PR_SET_MDWE). So chown,
for one, is refused: the API socket must get its group without a chown it does not need.

A throwaway system user (``useradd --system``) owns the work directory (state dir: owned
services and the HA boot epoch; the API socket), the HA key and the API token; it and a second
throwaway user, an operator in its group, are removed at the end, pass or fail (after the lab
killed every process).

director-b runs as root and becomes active alone; director-a starts as the user and becomes its
backup: its process holds exactly the two capabilities, it programs its nftables table (the real
server in it), and its API socket is the user's, mode 0660, group the user's group. The operator,
who cannot read the HA key (``check`` fails on it), gets the status with ``status -c``. Then
director-b is killed: director-a takes over, adds the VIPs to its interfaces, sends gratuitous ARP
(recorded on the client's segment from director-a's MAC) and forwards a client's HTTP request to
the real server. And the same daemon without CAP_NET_RAW refuses to start, naming it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nsprobe import wait_for
from pairlab import HTTP_PORT, RS, VIP, VIPS, A, B, HaPair, RunAs, Spec

from hacontrol.caps import decode
from hacontrol.dataplane.nft_render import NftRenderer
from hacontrol.dataplane.table import ServiceKey
from hacontrol.lab.netns import NetnsLab, Ns
from tests.integration import nftlist

pytestmark = pytest.mark.root

ETH_P_ARP = 0x0806
GET = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
s.sendall(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
"""


REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "deploy" / "hacontrol.service"

# Run `python -m hacontrol ...` (argv[2:]) in this process under the unit's confinement, as far as
# it concerns system calls: MemoryDenyWriteExecute (prctl PR_SET_MDWE, Linux 6.3+, what systemd
# uses where the kernel has it) and a seccomp filter allowing only the system calls in argv[1]
# (comma-separated), EPERM for the others (SystemCallErrorNumber=EPERM), with no_new_privs
# (libseccomp sets it). It first checks that the filter bites (chown is refused). In this process,
# not by exec: this machine's interpreter lies under /root (0700), which only setpriv's own exec,
# still privileged, may reach.
CONFINED = r"""
import ctypes, errno, os, runpy, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    print(f"no MemoryDenyWriteExecute here: errno {ctypes.get_errno()}", file=sys.stderr)
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM) by default
for name in sys.argv[1].split(","):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # not a call of this architecture otherwise
        assert lib.seccomp_rule_add(ctx, 0x7FFF0000, nr, 0) == 0, name  # SCMP_ACT_ALLOW
assert lib.seccomp_load(ctx) == 0
try:
    os.chown(".", -1, -1)
except PermissionError:
    pass
else:
    sys.exit("the seccomp filter does not refuse chown")
assert sys.argv[3:5] == ["-m", "hacontrol"], sys.argv
sys.argv = ["hacontrol", *sys.argv[5:]]
runpy.run_module("hacontrol", run_name="__main__", alter_sys=True)
"""


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group (``@system-service``), nested groups expanded, as
    ``systemd-analyze syscall-filter`` lists them; a plain name stands for itself."""
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    exe = shutil.which("systemd-analyze")
    assert exe, "systemd-analyze not found (Debian package systemd)"
    r = subprocess.run([exe, "syscall-filter", name], capture_output=True, text=True, timeout=60,
                       check=True)  # fmt: skip
    out: set[str] = set()
    for line in r.stdout.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            out |= syscall_group(item, seen)
    return out


def unit_syscalls() -> list[str]:
    """What the unit's SystemCallFilter= lines allow: the first (an allow list) and the later
    ones, a ``~`` list taking calls away, a plain list adding them back (systemd's rule)."""
    allowed: set[str] = set()
    for line in UNIT.read_text().splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.removeprefix("SystemCallFilter=")
        deny = value.startswith("~")
        names = set().union(*(syscall_group(n) for n in value.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    assert allowed, "the unit has no SystemCallFilter="
    return sorted(allowed)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def system_user(name: str, groups: tuple[str, ...] = ()) -> Iterator[Account]:
    """A system user with its own group (and ``groups``), deleted afterwards."""
    extra = ["--groups", ",".join(groups)] if groups else []
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", *extra, name], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    try:
        pw = pwd.getpwnam(name)
        yield Account(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


@dataclass
class Scene:
    pair: HaPair
    user: Account  # runs director-a
    operator: Account  # in the user's group
    workdir: Path

    syscalls: list[str]

    @property
    def run_as(self) -> RunAs:
        confined = (sys.executable, "-c", CONFINED, ",".join(self.syscalls))
        return RunAs(self.user.uid, self.user.gid, wrapper=confined)


@pytest.fixture
def scene() -> Iterator[Scene]:
    tag = os.getpid() % 1_000_000
    with (
        system_user(f"hctest{tag}") as user,
        system_user(f"hcop{tag}", groups=(f"hctest{tag}",)) as operator,
    ):
        workdir = Path(tempfile.mkdtemp(prefix="hcunpriv"))  # not under root's 0700 tmp dirs
        lab = NetnsLab()
        pair = HaPair(lab, workdir, Spec(real_server=True))
        try:
            workdir.chmod(0o755)
            os.chown(workdir, user.uid, user.gid)
            pair.build()
            for name in ("ha.key", "api.token"):  # 0600, the user's (root reads them anyway)
                os.chown(workdir / name, user.uid, user.gid)
            yield Scene(pair, user, operator, workdir, unit_syscalls())
        finally:
            try:
                pair.close()
                for name in pair.daemons:  # shown by pytest when the test failed
                    print(pair.tail(name, 60))
            finally:
                lab.close()
                shutil.rmtree(workdir, ignore_errors=True)


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def record_garp(ns: Ns, vip: str, ready: threading.Event, seconds: float) -> list[str]:
    """Sender MACs of the gratuitous ARP frames for ``vip`` (sender and target address both the
    VIP) that ``ns`` receives within ``seconds``; stops after three. ``ready``: listening."""
    packed = socket.inet_aton(vip)

    def rec() -> list[str]:
        out: list[str] = []
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
            s.settimeout(0.2)
            ready.set()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and len(out) < 3:
                try:
                    frame = s.recv(2048)
                except TimeoutError:
                    continue
                arp = frame[14:]
                if len(arp) >= 28 and arp[14:18] == packed and arp[24:28] == packed:
                    out.append(arp[8:14].hex(":"))
        return out

    return ns.call(rec)


def test_unprivileged_daemon_programs_moves_the_vip_and_announces(scene: Scene) -> None:
    pair, user = scene.pair, scene.user
    pair.start(B)
    pair.wait_role(B, "active", 60)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # a fake systemd for director-a
    notify.bind(str(scene.workdir / "notify"))
    (scene.workdir / "notify").chmod(0o666)
    a = pair.start(A, run_as=scene.run_as, env={"NOTIFY_SOCKET": str(scene.workdir / "notify")})
    pair.wait_role(A, "backup", 60)
    wait_for(lambda: pair.peer(A).get("alive") and pair.peer(B).get("alive"), 20,
             "the pair hearing each other", pair.explain)  # fmt: skip

    # systemd hears READY=1 (while the HA member starts), then the role with the table size
    heard = status_lines(notify, "backup, 1 services, 1 destinations, 0 apply errors")
    assert heard[0].startswith("READY=1\nSTATUS="), heard

    # the process: the user, exactly the two capabilities, nothing else possible
    st = proc_status(a.pid)
    assert st["Uid"].split()[:2] == [str(user.uid)] * 2, st["Uid"]
    assert decode(st["CapEff"]) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert decode(st["CapBnd"]) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert (st["Seccomp"], st["NoNewPrivs"]) == ("2", "1")  # filtered, as under the unit

    # the data plane: its nftables tables, the service's with the real server in its rule,
    # programmed by the daemon itself, as that user
    shard = NftRenderer("hacontrol").shard(ServiceKey("tcp", VIP, HTTP_PORT))

    def table() -> str:
        r = pair.lab[A].run("nft", "list", "table", "inet", shard, check=False)
        return r.stdout if r.returncode == 0 else ""

    text = wait_for(lambda: RS in table() and table(), 30, "director-a's nft table", pair.explain)
    assert VIP in text, text
    assert nftlist.present(pair.lab[A], "hacontrol") == nftlist.expected("hacontrol", {shard})

    # the API socket: the user's, its group, 0660; the operator reads the status without the key
    sock = os.stat(pair.sock(A))
    assert (sock.st_uid, sock.st_gid, stat.S_IMODE(sock.st_mode)) == (user.uid, user.gid, 0o660)
    op = scene.operator
    as_operator = ["setpriv", f"--reuid={op.uid}", f"--regid={op.gid}", "--init-groups",
                   "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "hacontrol"]
    cfg = str(pair.config_path(A))
    r = subprocess.run([*as_operator, "check", "-c", cfg], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and "ha.secret_file" in r.stderr, r  # the key is not the operator's
    r = subprocess.run([*as_operator, "status", "-c", cfg], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 0 and "role backup" in r.stdout, r

    # the client resolves the VIP to director-b; then director-b dies
    pair.client_sees_active(B)
    ready = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        garp = pool.submit(record_garp, pair.lab["client"], VIP, ready, 30.0)
        assert ready.wait(30), "the ARP recorder did not start"
        pair.kill(B)
        pair.wait_role(A, "active", 20)
        senders = garp.result(timeout=60)
    assert senders and set(senders) == {pair.mac(A)}, (senders, pair.mac(A))
    pair.wait_vips({A}, 20)
    assert set(pair.vips(A)) == set(VIPS)  # kernel addresses added by the unprivileged daemon
    pair.client_learns(A)  # the announcement changed the client's neighbour entry

    # traffic: the client's request through director-a's NAT reaches the real server
    r = pair.lab["client"].run(sys.executable, "-c", GET, VIP, timeout=60)
    assert r.stdout.strip().startswith("rs1"), r
    assert not [e for e in pair.events(A) if e.get("level") == "error"], pair.tail(A)
    assert a.poll() is None

    # what systemd heard after the backup line: the role change, with the table size
    heard = status_lines(notify, "active, 1 services, 1 destinations, 0 apply errors")
    notify.close()
    assert [m for m in heard if m.startswith("STATUS=")] == [heard[-1]], heard


def status_lines(sock: socket.socket, last: str, timeout: float = 30.0) -> list[str]:
    """Every datagram on the fake notification socket until the STATUS= line ``last``."""
    out: list[str] = []
    deadline = time.monotonic() + timeout
    while not out or not out[-1].endswith(f"STATUS={last}"):
        left = deadline - time.monotonic()
        assert left > 0, f"no STATUS={last} within {timeout}s: {out}"
        sock.settimeout(left)
        with contextlib.suppress(TimeoutError):
            out.append(sock.recv(4096).decode())
    return out


def test_without_net_raw_the_daemon_refuses_to_start(scene: Scene) -> None:
    pair = scene.pair
    p = pair.start(A, run_as=RunAs(scene.user.uid, scene.user.gid, caps=("net_admin",)))
    assert pair.exit_code(A, 60) == 1
    refused = [e for e in pair.events(A, "daemon.start") if e.get("result") == "error"]
    assert len(refused) == 1, pair.tail(A)
    assert refused[0]["reason"] == "missing capabilities: CAP_NET_RAW (gratuitous ARP)"
    assert refused[0]["level"] == "error"
    assert p.returncode == 1
    # nothing was touched: no table, no VIP, no socket
    assert nftlist.present(pair.lab[A], "hacontrol") == []
    assert not pair.vips(A) and not pair.sock(A).exists()
