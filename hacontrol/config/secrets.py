"""The rules for the two secret files, shared by ``hacontrol check`` and the running daemon.

``read_key`` (``ha.secret_file``: the shared heartbeat key) and ``read_token``
(``api.token_file``: the API bearer token) read a file and return its content with surrounding
whitespace stripped, or raise ``SecretError`` saying why it is unusable. The config loader calls
them when it checks files (so ``check`` refuses what ``run`` would), and the daemon calls them
when it starts and reloads (``hacontrol.ha.transport.load_key``, ``hacontrol.process.read_token``):
one set of rules, one place. Nothing here logs; file modes are the caller's business (the HA code
warns about a key readable by others).
"""

from __future__ import annotations

KEY_MIN_BYTES = 16  # HMAC-SHA256 key; 32 random bytes recommended (docs/ha-wire.md)
MAX_BYTES = 4096  # either file; a token longer than an HTTP header line could never be sent


class SecretError(ValueError):
    """The file is unusable; ``str()`` is the reason, without the path (callers add it)."""


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:  # "No such file or directory", "Permission denied", "Is a directory"
        raise SecretError(f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise SecretError(f"the file is larger than {MAX_BYTES} bytes")
    stripped = raw.strip()
    if not stripped:
        raise SecretError("the file is empty" if not raw else "the file holds only whitespace")
    return stripped


def read_key(path: str) -> bytes:
    """The HA key: the file's bytes, surrounding whitespace stripped, at least 16 of them."""
    key = _read(path)
    if len(key) < KEY_MIN_BYTES:
        raise SecretError(
            f"the key must be at least {KEY_MIN_BYTES} bytes (surrounding whitespace not "
            f"counted), got {len(key)}"
        )
    return key


def read_token(path: str) -> str:
    """The API token: one line of printable ASCII, surrounding whitespace stripped."""
    raw = _read(path)
    try:
        token = raw.decode("ascii")
    except UnicodeDecodeError:
        raise SecretError("the token must be ASCII text") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in token):
        raise SecretError("the token must be one line without control characters")
    return token
