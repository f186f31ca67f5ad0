"""Replacing a small state file atomically: the one way every module of hacontrol writes one.

``write_atomic`` writes the new content to a temporary file in the same directory, fsyncs it,
gives it its mode, renames it over the old file and fsyncs the directory, so a crash at any point
leaves the old file (content and mode as they were) or the new one, never half of one. A failed
write removes its temporary file; a crash may leave one behind (``.<prefix>…``, never read).
The directory must exist (creating it, or not, is the caller's choice). The file is owned by the
writing process's user, as the old one is replaced rather than rewritten.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes,
    *,
    mode: int = 0o600,
    prefix: str | None = None,
) -> None:
    """Replace ``path`` by ``data`` (text is written as UTF-8) with permission bits ``mode``
    (not subject to the umask). ``prefix`` names the temporary file (default ``.<name>.``).
    Raises OSError; the old file is then untouched."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=prefix or f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
