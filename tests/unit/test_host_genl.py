"""The generic netlink family request (hacontrol.dataplane.genl) and the plane choice built on it
(hacontrol.dataplane.select.choose_plane): pinned bytes, replies decoded, every branch of the
choice with an injected resolver, and one real round trip to this kernel's controller (no root)."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from hacontrol.dataplane import genl
from hacontrol.dataplane.select import PlaneChoice, choose_plane, open_plane
from hacontrol.model import DataplaneConfig

# nlmsghdr: len 32, type GENL_ID_CTRL (0x10), flags REQUEST, seq 7, pid 0 | genlmsghdr: cmd
# GETFAMILY (3), version 1 | nlattr: len 9, type FAMILY_NAME (2), "IPVS\0" + 3 bytes of padding
GETFAMILY_IPVS_SEQ7 = "2000000010000100070000000000000003010000090002004950565300000000"


def nlmsg(mtype: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, seq, 0) + body


def newfamily(seq: int, fid: int) -> bytes:
    name = b"IPVS\0\0\0\0"
    attrs = struct.pack("=HH", 9, 2) + name + struct.pack("=HHH2x", 6, 1, fid)
    return nlmsg(0x10, seq, bytes([1, 2, 0, 0]) + attrs)


def nlerror(seq: int, code: int) -> bytes:
    return nlmsg(2, seq, struct.pack("=i", code) + b"\0" * 16)


def test_request_bytes_are_pinned() -> None:
    assert genl.encode_getfamily("IPVS", 7).hex() == GETFAMILY_IPVS_SEQ7


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (newfamily(7, 0x1D), genl.FamilyReply(0x1D)),
        (nlerror(7, -errno.ENOENT), genl.FamilyReply(None, errno.ENOENT)),
        (nlerror(7, -errno.EPERM), genl.FamilyReply(None, errno.EPERM)),
        (nlerror(7, 0), None),  # a bare ack is no answer
        (newfamily(8, 0x1D), None),  # another request's answer is skipped
        (nlerror(8, -errno.ENOENT) + newfamily(7, 0x22), genl.FamilyReply(0x22)),
        (b"", None),
    ],
)
def test_replies_decoded(data: bytes, want: genl.FamilyReply | None) -> None:
    assert genl.decode_reply(data, 7) == want


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (newfamily(7, 1)[:-8] + b"", "truncated"),
        (struct.pack("=IHHII", 8, 2, 0, 7, 0) + b"\0" * 8, "truncated"),
        (nlmsg(2, 7, b"\0\0"), "short NLMSG_ERROR"),
        (nlmsg(0x10, 7, bytes([1, 2, 0, 0])), "without CTRL_ATTR_FAMILY_ID"),
    ],
)
def test_unreadable_replies_raise(data: bytes, match: str) -> None:
    with pytest.raises(genl.GenlError, match=match):
        genl.decode_reply(data, 7)


def test_this_kernels_controller_answers() -> None:
    """A real round trip: the controller resolves itself, and refuses a name nobody provides."""
    assert genl.family_id("nlctrl") == genl.GENL_ID_CTRL
    assert genl.family_id("hc-no-such-fam") is None


class Resolver:
    """Stands in for the kernel: records requests; may make /proc/net/ip_vs appear (a module
    loaded), return an id, or fail."""

    def __init__(self, proc: Path, *, loads: bool = False, fid: int | None = None,
                 fail: Exception | None = None) -> None:  # fmt: skip
        self.proc, self.loads, self.fid, self.fail = proc, loads, fid, fail
        self.asked: list[str] = []

    def __call__(self, name: str) -> int | None:
        self.asked.append(name)
        if self.fail is not None:
            raise self.fail
        if self.loads:
            self.proc.write_text("")
            return 0x1D
        return self.fid


@pytest.mark.parametrize(
    ("kind", "present", "resolver", "want_kind", "reason", "asked"),
    [
        ("auto", True, {}, "ipvs", "ipvs: auto, kernel has IPVS (", False),
        ("auto", False, {"loads": True}, "ipvs",
         "ipvs: auto, loaded on demand via genl family request", True),
        ("auto", False, {}, "nftables",
         "nftables: kernel has no IPVS (genl family IPVS unknown after autoload attempt)", True),
        ("auto", False, {"fid": 30}, "nftables", "genl family IPVS is id 30 but", True),
        ("auto", False, {"fail": OSError(errno.EPERM, "no")}, "nftables",
         "nftables: kernel has no IPVS (genl family request failed:", True),
        ("ipvs", False, {"loads": True}, "ipvs", "ipvs: config kind ipvs, loaded on demand", True),
        ("ipvs", False, {}, "ipvs", "ipvs: config kind ipvs, but genl family IPVS unknown", True),
        ("nftables", False, {}, "nftables", "nftables: set in the config", False),
        ("memory", True, {}, "memory", "memory: set in the config", False),
    ],
)  # fmt: skip
async def test_choose_plane(
    tmp_path: Path,
    kind: str,
    present: bool,
    resolver: dict[str, object],
    want_kind: str,
    reason: str,
    asked: bool,
) -> None:
    proc = tmp_path / "ip_vs"
    if present:
        proc.write_text("")
    r = Resolver(proc, **resolver)  # type: ignore[arg-type]
    choice = await choose_plane(DataplaneConfig(kind=kind), str(proc), resolve=r)  # type: ignore[arg-type]
    assert choice.kind == want_kind
    assert reason in choice.reason, choice.reason
    assert r.asked == (["IPVS"] if asked else [])


async def test_open_plane_logs_and_returns_the_choice(tmp_path: Path) -> None:
    with capture_logs() as logs:
        plane, choice = await open_plane(DataplaneConfig(kind="memory"))
    assert plane.kind == "memory" and choice == PlaneChoice("memory", "memory: set in the config")
    sel = [e for e in logs if e["event"] == "dataplane.select"]
    assert sel == [
        {
            "event": "dataplane.select",
            "kind": "memory",
            "reason": "memory: set in the config",
            "config_kind": "memory",
            "log_level": "info",
            "logger": "hacontrol.dataplane.select",
        }
    ]
    assert choice.as_dict() == {"kind": "memory", "reason": "memory: set in the config"}
