"""The exec probe: run an operator's command against a target; exit status 0 means up.

The argv is built once per target, ``{address}`` and ``{port}`` substituted by plain text
replacement in each argument (never a shell). The child runs in its own session (its own process
group) with stdin from /dev/null; stdout and stderr are captured, keeping only the last
``OUTPUT_CAP`` bytes of each for the reason ("exit 1: <stderr tail>"). On timeout or stop the
whole process group is killed with SIGKILL, so a command that forked helpers leaves none behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import Any

from hacontrol.health.tcp import Done, Poller

__all__ = ["OUTPUT_CAP", "ExecProbe", "build_argv"]

OUTPUT_CAP = 4096  # bytes kept of each of stdout and stderr
_TAIL = 160  # characters of output shown in a reason


def build_argv(command: tuple[str, ...], address: str, port: int) -> tuple[str, ...]:
    if not command or not command[0]:
        raise ValueError("exec check: command is empty")
    return tuple(a.replace("{address}", address).replace("{port}", str(port)) for a in command)


def _tail(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


class _Child(asyncio.SubprocessProtocol):
    def __init__(self, probe: ExecProbe, gen: int) -> None:
        self.probe = probe
        self.gen = gen
        self.out = {1: b"", 2: b""}
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self.out.get(fd, b"") + data
        self.out[fd] = buf[-OUTPUT_CAP:]

    def connection_lost(self, exc: Exception | None) -> None:
        # called once the process has exited and both pipes are closed
        transport = self.transport
        if transport is None:
            return
        rc = transport.get_returncode()
        transport.close()
        self.probe.exited(self.gen, rc, self.out[2] or self.out[1])


class ExecProbe:
    kind = "exec"
    __slots__ = ("_argv", "_child", "_done", "_gen", "_pid", "_task")

    def __init__(self, command: tuple[str, ...], address: str, port: int) -> None:
        self._argv = build_argv(command, address, port)
        self._done: Done | None = None
        self._task: asyncio.Task[None] | None = None
        self._child: _Child | None = None
        self._pid: int | None = None
        self._gen = 0

    @property
    def argv(self) -> tuple[str, ...]:
        return self._argv

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The spawn in progress, if any."""
        return self._task

    def start(self, poller: Poller, done: Done) -> None:
        self._done = done
        self._gen += 1
        self._task = poller.loop.create_task(self._spawn(poller.loop, self._gen))

    async def _spawn(self, loop: asyncio.AbstractEventLoop, gen: int) -> None:
        kw: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
            "start_new_session": True,
        }
        try:
            transport, child = await loop.subprocess_exec(
                lambda: _Child(self, gen), *self._argv, **kw
            )
        except OSError as e:
            self._forget_task()
            self._finish(False, f"cannot run {self._argv[0]}: {(e.strerror or str(e)).lower()}")
            return
        self._forget_task()
        if gen != self._gen or self._done is None:  # cancelled meanwhile
            _killpg(transport.get_pid())
            transport.close()
            return
        self._child = child
        self._pid = transport.get_pid()

    def _forget_task(self) -> None:
        if self._task is asyncio.current_task():
            self._task = None

    def exited(self, gen: int, rc: int | None, output: bytes) -> None:
        if gen != self._gen:
            return
        self._child = None
        self._pid = None
        if rc == 0:
            self._finish(True, "exit 0")
        elif rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            self._finish(False, f"killed by {name}")
        else:
            tail = _tail(output)
            self._finish(False, f"exit {rc}: {tail}" if tail else f"exit {rc}")

    def _finish(self, ok: bool, reason: str) -> None:
        done = self._done
        self._done = None
        if done is not None:
            done(ok, reason)

    def cancel(self) -> str:
        self._done = None
        self._gen += 1
        # a spawn in progress is not cancelled (its child could escape with the group): it sees
        # the new generation when it completes and kills the group itself
        phase = "starting" if self._task is not None else ""
        if self._pid is not None:
            _killpg(self._pid)
            self._pid = None
        child, self._child = self._child, None
        if child is not None and child.transport is not None:
            child.transport.close()  # reaps the killed leader
        return phase


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
