"""Parse and validate a config file for a reload in a child process, bounded in time and memory.

A reload must never block the event loop (heartbeats, the API, stop): the YAML parse and the
validation run in ``python -m hacontrol.reload_parse PATH MEMORY``, a child that limits its own
address space (``RLIMIT_AS``) before reading anything and writes one pickle to stdout: the
validated ``Config`` or the list of errors (capped by ``hacontrol.config.limits.MAX_ERRORS``).
The parent (``parse_in_child``) waits on the loop with a deadline; on timeout or cancellation
(the daemon stops) it kills the child and reaps it. The child is our own code run by the same
interpreter, so its pickle is trusted; its output is still capped (``MAX_OUTPUT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import resource
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hacontrol.config import ConfigError, load
from hacontrol.model import Config

__all__ = [
    "PARSE_DEADLINE",
    "PARSE_MEMORY",
    "Parse",
    "Refused",
    "parse_here",
    "parse_in_child",
]

PARSE_DEADLINE = 30.0  # seconds a reload's parse + validation may take
PARSE_MEMORY = 1 << 30  # bytes of address space the child may use (RLIMIT_AS)
MAX_OUTPUT = 256 << 20  # bytes of pickle the parent reads at most
_STDERR_TAIL = 2000


@dataclass(frozen=True)
class Refused:
    """The file cannot be used; ``errors`` as ``file:line: field: reason`` lines."""

    errors: list[str]


# how a reload parses the file: the child by default, something in-process in unit tests
Parse = Callable[[str], Awaitable[Config | Refused]]


def parse_here(path: str, memory: int = PARSE_MEMORY) -> Config | Refused:
    """The verdict on ``path`` in this process (the child's work; never raises for bad input)."""
    try:
        return load(path)
    except ConfigError as exc:
        return Refused(str(exc).splitlines())  # capped by config (limits.MAX_ERRORS)
    except OSError as exc:
        return Refused([f"{path}: {exc.strerror or exc}"])
    except MemoryError:
        return Refused([f"{path}: parsing needs more than the {memory >> 20} MiB a reload may use"])
    except RecursionError:
        return Refused([f"{path}: nested too deeply to parse"])


async def _read_capped(stream: asyncio.StreamReader | None, cap: int) -> tuple[bytes, bool]:
    """Everything up to ``cap`` bytes; (data, True) when there was more (the rest is drained)."""
    if stream is None:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    over = False
    while chunk := await stream.read(1 << 16):
        if size + len(chunk) > cap:
            over = True
            continue  # keep draining: a child blocked on a full pipe would never exit
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), over


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable wherever the daemon runs from."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("NOTIFY_SOCKET", None)  # only the daemon talks to systemd
    return env


async def parse_in_child(
    path: str, *, deadline: float = PARSE_DEADLINE, memory: int = PARSE_MEMORY
) -> Config | Refused:
    """Parse and validate ``path`` in a child process; Refused on a bad file, a child that ran
    out of time (``deadline`` seconds) or memory, or died. Cancelling kills the child."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hacontrol.reload_parse", path, str(memory),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=_child_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(deadline):
            (out, over), (err, _) = await asyncio.gather(
                _read_capped(proc.stdout, MAX_OUTPUT), _read_capped(proc.stderr, 1 << 20)
            )
            rc = await proc.wait()
    except TimeoutError:
        return Refused([f"{path}: parsing took longer than {deadline:g}s: abandoned"])
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if over:
        return Refused([f"{path}: the parsed config is larger than {MAX_OUTPUT >> 20} MiB"])
    if rc != 0 or not out:
        tail = err.decode(errors="replace").strip()[-_STDERR_TAIL:]
        why = f"signal {-rc}" if rc < 0 else f"exit {rc}"
        return Refused([f"{path}: the config parser failed ({why}){': ' + tail if tail else ''}"])
    outcome = pickle.loads(out)  # our own child's answer (see the module docstring)
    if isinstance(outcome, list):
        return Refused([str(line) for line in outcome])
    if not isinstance(outcome, Config):
        return Refused([f"{path}: the config parser answered {type(outcome).__name__}"])
    return outcome


def _limit_memory(memory: int) -> None:
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit already set stays
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def main(argv: list[str]) -> int:
    """The child: ``PATH MEMORY`` -> one pickle on stdout: the Config, or the error lines."""
    path, memory = argv[0], int(argv[1])
    _limit_memory(memory)
    outcome = parse_here(path, memory)
    answer = outcome.errors if isinstance(outcome, Refused) else outcome  # no __main__ class
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
