"""Parse and validate a config file for a reload in a child process, bounded in time and memory.

A reload must never block the event loop (heartbeats, the API, stop): the YAML parse and the
validation run in ``python -m hacontrol.reload_parse PATH MEMORY``, a child that limits its own
address space (``RLIMIT_AS``) before reading anything and writes one pickle to stdout: the
validated ``Config`` (without its services) with one pickle per service, or the list of errors
(capped by ``hacontrol.config.limits.MAX_ERRORS``). The parent (``parse_in_child``) waits on the
loop with a deadline; on timeout or cancellation (the daemon stops) it kills the child and reaps
it. The child is our own code run by the same interpreter, so its pickle is trusted; its output
is still capped (``MAX_OUTPUT``).

The parent never unpickles a big table in one go (2,284 services x 16 real servers: 1.6 MB,
70-500 ms of the event loop, the heartbeat's): the services are loaded ``SLICE_SERVICES`` at a
time with ``asyncio.sleep(0)`` between slices, and a ``ChildParser`` keeps the services of its
last parse by their pickle: an unchanged service is not unpickled again but answered as the
same object (pickles of equal services are equal bytes; a differing pickle is only more work).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import resource
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hacontrol.config import ConfigError, load
from hacontrol.model import Config, ServiceConfig

__all__ = [
    "PARSE_DEADLINE",
    "PARSE_MEMORY",
    "ChildParser",
    "Parse",
    "Refused",
    "load_services",
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
Known = dict[bytes, ServiceConfig]  # the services of a past parse, by their pickle
SLICE_SERVICES = 32  # services unpickled between two yields at most


class ChildParser:
    """``parse_in_child`` that keeps the services of its last parse (see the module doc)."""

    def __init__(self, deadline: float = PARSE_DEADLINE, memory: int = PARSE_MEMORY) -> None:
        self.deadline, self.memory = deadline, memory
        self.known: Known = {}

    async def __call__(self, path: str) -> Config | Refused:
        return await parse_in_child(
            path, deadline=self.deadline, memory=self.memory, known=self.known
        )


async def load_services(blobs: list[bytes], known: Known | None = None) -> list[ServiceConfig]:
    """The services of the child's pickles, ``SLICE_SERVICES`` unpickled between two yields;
    one in ``known`` is that object. ``known`` then holds exactly these services."""
    seen = {} if known is None else known
    out: list[ServiceConfig] = []
    fresh = 0
    for blob in blobs:
        svc = seen.get(blob)
        if svc is None:
            svc = pickle.loads(blob)
            if not isinstance(svc, ServiceConfig):
                raise TypeError(f"the config parser answered {type(svc).__name__} for a service")
            fresh += 1
            if fresh % SLICE_SERVICES == 0:
                await asyncio.sleep(0)
        out.append(svc)
    if known is not None:
        known.clear()
        known.update(zip(blobs, out, strict=True))
    return out


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
    path: str,
    *,
    deadline: float = PARSE_DEADLINE,
    memory: int = PARSE_MEMORY,
    known: Known | None = None,
) -> Config | Refused:
    """Parse and validate ``path`` in a child process; Refused on a bad file, a child that ran
    out of time (``deadline`` seconds) or memory, or died. Cancelling kills the child.
    ``known``: the services of the last parse, kept (``load_services``)."""
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
    if not (isinstance(outcome, tuple) and len(outcome) == 2 and isinstance(outcome[0], Config)):
        return Refused([f"{path}: the config parser answered {type(outcome).__name__}"])
    try:
        services = await load_services(outcome[1], known)
    except TypeError as exc:
        return Refused([f"{path}: {exc}"])
    return dataclasses.replace(outcome[0], services=tuple(services))


def _limit_memory(memory: int) -> None:
    with contextlib.suppress(ValueError, OSError):  # a lower hard limit already set stays
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def main(argv: list[str]) -> int:
    """The child: ``PATH MEMORY`` -> one pickle on stdout: the Config, or the error lines."""
    path, memory = argv[0], int(argv[1])
    _limit_memory(memory)
    outcome = parse_here(path, memory)
    answer: object  # plain values: no class of __main__ in the pickle
    if isinstance(outcome, Config):
        head = dataclasses.replace(outcome, services=())
        answer = (head, [pickle.dumps(svc, protocol=pickle.HIGHEST_PROTOCOL)
                         for svc in outcome.services])  # fmt: skip
    else:
        answer = outcome.errors
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
