"""hacontrol.fsutil.write_atomic on a real file system: the new content with the asked mode, and
a crash between the write and the rename (a real process killed there) leaves the old file, its
content and mode, as they were."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hacontrol.fsutil import write_atomic

# the child writes, then SIGKILLs itself where the rename would be: a crash at the worst moment
CRASH = """
import os, signal, sys
from hacontrol import fsutil
os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
fsutil.write_atomic(sys.argv[1], "new content\\n", mode=0o600)
"""


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("want", [0o600, 0o644, 0o640])
def test_writes_the_content_with_the_mode_asked_whatever_the_umask(
    tmp_path: Path, want: int
) -> None:
    p = tmp_path / "state.json"
    p.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        write_atomic(p, "new\n", mode=want)
    finally:
        os.umask(old_umask)
    assert p.read_text() == "new\n" and mode(p) == want
    write_atomic(p, b"\x00bytes")
    assert p.read_bytes() == b"\x00bytes" and mode(p) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temporary file left


def test_a_crash_between_write_and_rename_leaves_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "owned.json"
    p.write_text("old content\n")
    p.chmod(0o640)
    r = subprocess.run([sys.executable, "-c", CRASH, str(p)], capture_output=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert p.read_text() == "old content\n" and mode(p) == 0o640
    left = [n for n in os.listdir(tmp_path) if n != "owned.json"]
    assert len(left) == 1 and left[0].startswith(".owned.json.")  # the new one, never read
    assert (tmp_path / left[0]).read_text() == "new content\n"


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "target").mkdir()  # a directory: the rename over it fails (IsADirectoryError)
    (d / "target" / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        write_atomic(d / "target", "new", prefix=".t.")
    assert sorted(os.listdir(d)) == ["target"] and (d / "target" / "keep").read_text() == "x"


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "f", "x")
    assert not (tmp_path / "nope").exists()
