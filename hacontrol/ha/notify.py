"""The notify command: runs the operator's program on every HA role transition.

The configured argv (``ha.notify``) has ``{role}``, ``{reason}`` and ``{node}`` substituted in each
argument and is executed directly, never through a shell. The program runs in its own session
(process group); when it outlives ``timeout`` the whole group is killed. Every run is logged once
as ``ha.notify`` with its role, reason, exit status (or error) and duration. A missing binary, a
permission error or a timeout is logged, never raised: notification must not stop a failover.
Runs are serialised in call order, so the program sees transitions in the order they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hacontrol import logs
from hacontrol.model import HAConfig
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.ha.notify")

Outcome = Literal["ok", "failed", "timeout", "error", "skipped"]

_OUTPUT_LIMIT = 2048  # bytes of the program's output kept for the log


def render_argv(template: Sequence[str], *, role: str, reason: str, node: str) -> list[str]:
    """Substitute ``{role}``, ``{reason}`` and ``{node}`` in every argument.

    Plain replacement (not ``str.format``): other braces in an argument are left as they are.
    """
    out: list[str] = []
    for arg in template:
        out.append(arg.replace("{role}", role).replace("{reason}", reason).replace("{node}", node))
    return out


async def _read_limited(stream: asyncio.StreamReader, limit: int) -> bytes:
    """Read up to ``limit`` bytes, then drain (and drop) the rest until EOF."""
    buf = bytearray()
    while chunk := await stream.read(65536):
        if len(buf) < limit:
            buf += chunk[: limit - len(buf)]
    return bytes(buf)


@dataclass(frozen=True)
class NotifyResult:
    """What one run of the notify program did."""

    outcome: Outcome
    argv: tuple[str, ...]
    returncode: int | None = None  # exit status; negative = killed by that signal
    error: str | None = None  # why it could not run (missing binary, permission, ...)
    duration: float = 0.0
    output: str = ""  # the start of its stdout+stderr


class CommandNotifier:
    """Implements ``hacontrol.ha.interfaces.Notifier``: ``await notify(role, reason)``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        node: str,
        timeout: float = 5.0,
        kill_grace: float = 0.5,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"notify timeout must be > 0, got {timeout}")
        self.argv = tuple(argv)
        self.node = node
        self.timeout = timeout
        self.kill_grace = kill_grace
        self._lock = asyncio.Lock()
        self.last: NotifyResult | None = None

    @classmethod
    def from_config(cls, ha: HAConfig, node: str) -> CommandNotifier:
        """``ha.notify`` argv with ``ha.notify_timeout`` (an empty argv runs nothing)."""
        return cls(ha.notify, node=node, timeout=ha.notify_timeout)

    async def notify(self, role: str, reason: str) -> None:
        """The ``Notifier`` protocol: run the program for one transition; never raises."""
        await self.run(role, reason)

    async def run(self, role: str, reason: str) -> NotifyResult:
        """Run the program for one transition and return what happened (never raises)."""
        if not self.argv:
            return NotifyResult("skipped", ())
        argv = render_argv(self.argv, role=role, reason=reason, node=self.node)
        async with self._lock:
            result = await self._run(argv)
        self.last = result
        fields = {
            "role": role,
            "reason": reason,
            "node": self.node,
            "argv": list(result.argv),
            "outcome": result.outcome,
            "returncode": result.returncode,
            "duration": round(result.duration, 4),
        }
        if result.error:
            fields["error"] = result.error
        if result.output:
            fields["output"] = result.output
        if result.outcome == "ok":
            log.info("ha.notify", **fields)
        else:
            log.warning("ha.notify", **fields)
        return result

    async def _run(self, argv: list[str]) -> NotifyResult:
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:  # missing binary, not executable, ...
            return NotifyResult(
                "error",
                tuple(argv),
                error=f"{type(e).__name__}: {e.strerror or e}",
                duration=time.monotonic() - start,
            )
        assert proc.stdout is not None
        reader = asyncio.ensure_future(_read_limited(proc.stdout, _OUTPUT_LIMIT))
        try:
            rc = await asyncio.wait_for(proc.wait(), self.timeout)
        except TimeoutError:
            await self._kill_group(proc)
            await cancel_and_wait(reader)
            return NotifyResult(
                "timeout",
                tuple(argv),
                returncode=proc.returncode,
                error=f"still running after {self.timeout}s: process group killed",
                duration=time.monotonic() - start,
            )
        except asyncio.CancelledError:
            await self._kill_group(proc)
            reader.cancel()
            raise
        output = b""
        try:
            # the program exited; a grandchild holding the pipe must not hold us up
            output = await asyncio.wait_for(reader, self.kill_grace)
        except TimeoutError:
            await cancel_and_wait(reader)
        return NotifyResult(
            "ok" if rc == 0 else "failed",
            tuple(argv),
            returncode=rc,
            duration=time.monotonic() - start,
            output=output.decode("utf-8", "replace").strip(),
        )

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    async def _kill_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the program's process group, SIGKILL it after ``kill_grace``."""
        self._signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), self.kill_grace)
        self._signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
