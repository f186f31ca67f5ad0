"""The API's listener: TCP host:port or a unix socket, and JSON answers to requests aiohttp's own
HTTP parser refuses.

``ApiServer`` serves an app (``hacontrol.api.app.create_app``) through an ``AppRunner`` whose
connections use ``JsonErrorHandler``: aiohttp answers a request its parser cannot read (a 64 KB
header, 200 headers, a bad request line) from ``RequestHandler.handle_error`` with a text/plain
400 before any middleware runs; here that answer is the API's JSON error body
``{"error": ..., "status": n}`` like every other, logged as ``api.refused`` (``api.error`` for a
500, never with the traceback in the body). ``json_error`` builds that body for the app too.

A unix socket is made mode 0660 and given the operators' group (``socket_group``: ``api.group``,
else "hacontrol" when that group exists and the process may use it, else the process's own
group), so members of the group may call the API without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import socket
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from hacontrol import logs
from hacontrol.model import ApiConfig, host_port

log = logs.get("api")


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    """The API's error answer: ``{"error": message, "status": status, **extra}``."""
    headers = extra.pop("headers", None)
    return web.json_response(
        {"error": message, "status": status, **extra}, status=status, headers=headers
    )


def parse_listen(listen: str) -> tuple[str, str | int]:
    """("unix", path) or (host, port) from "unix:/path", "host:port" or "[v6]:port"."""
    if listen.startswith("unix:"):
        path = listen[5:]
        if not path.startswith("/"):
            raise ValueError(f"api.listen: unix socket path must be absolute: {listen!r}")
        return "unix", path
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"api.listen: expected host:port or unix:/path, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _refuse_live_socket(path: str) -> None:
    """Raise EADDRINUSE when another process serves ``path`` (a second daemon, a dry run next
    to the real one); a stale socket file is left for the bind to replace."""
    if not Path(path).is_socket():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return  # nobody listens: stale
    raise OSError(errno.EADDRINUSE, f"another process serves {path}")


DEFAULT_GROUP = "hacontrol"


def socket_group(name: str | None) -> tuple[int, str]:
    """(gid, name) the API socket gets. ``name`` (``api.group``) must exist: OSError otherwise.
    Without one: the group "hacontrol" when it exists and this process may give it to a file
    (root, or a member), else the process's effective group."""
    if name is not None:
        try:
            return grp.getgrnam(name).gr_gid, name
        except KeyError:
            raise OSError(errno.ENOENT, f"api.group {name}: no such group") from None
    egid = os.getegid()
    try:
        default = grp.getgrnam(DEFAULT_GROUP).gr_gid
    except KeyError:
        default = None
    if default is not None and (os.geteuid() == 0 or default in (egid, *os.getgroups())):
        return default, DEFAULT_GROUP
    try:
        return egid, grp.getgrgid(egid).gr_name
    except KeyError:
        return egid, str(egid)


def _give_group(path: str, gid: int, name: str) -> None:
    """chgrp ``path`` unless it has the group already: a new file gets the process's group
    (or a setgid directory's), which under the packaged unit is the one wanted, and the unit's
    system-call filter refuses chown (``~@privileged`` holds ``@chown``)."""
    if os.stat(path).st_gid == gid:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        why = (
            f"chgrp {path} {name}: {exc.strerror} (the daemon's user must be in the group; under "
            "systemd also allow chown: SystemCallFilter=@chown in a drop-in)"
        )
        raise OSError(exc.errno, why) from None


class ApiServer:
    """Serves an app on TCP host:port or a unix socket (mode 0660, group ``group`` as
    ``socket_group`` resolves it, parent dir created 0750)."""

    def __init__(
        self,
        app: web.Application,
        listen: str,
        socket_mode: int = 0o660,
        shutdown_timeout: float = 0.3,
        group: str | None = None,
    ) -> None:
        self.app = app
        self.group = group
        self.socket_gid: int | None = None  # the unix socket's group once started
        self.shutdown_timeout = shutdown_timeout  # in-flight requests get this long on stop
        self.listen = listen
        self.socket_mode = socket_mode
        self._runner: web.AppRunner | None = None
        self._unix_path: str | None = None
        self.bound: str = ""  # the actual address once started (the real port when 0 was asked)

    @classmethod
    def of(cls, app: web.Application, api: ApiConfig) -> ApiServer:
        """The server of ``app`` for the ``api`` section (listen, group)."""
        return cls(app, api.listen, group=api.group)

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        runner = _Runner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        try:
            site: web.BaseSite
            if host == "unix":
                path = str(port)
                gid, gname = socket_group(self.group)  # an unknown api.group: before the bind
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                _refuse_live_socket(path)
                old_umask = os.umask(0o117)
                try:
                    site = web.UnixSite(runner, path)
                    await site.start()
                finally:
                    os.umask(old_umask)
                self._unix_path = path
                os.chmod(path, self.socket_mode)
                _give_group(path, gid, gname)
                self.socket_gid = gid
                self.bound = f"unix:{path}"
            else:
                assert isinstance(port, int)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
                bound = runner.addresses  # (host, port, ...) of each listening socket
                real_port = int(bound[0][1]) if bound else port
                self.bound = host_port(host, real_port)
        except BaseException:
            await runner.cleanup()
            if self._unix_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._unix_path)
                self._unix_path = None
            raise
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = None


class JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering the errors it makes itself with JSON."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the answer has begun: only closing is left
            raise ConnectionError("response already started, cannot send the error")
        if status >= 500:
            log.error("api.error", status=status, reason=f"{type(exc).__name__}: {exc}")
            text = "internal error" if status == 500 else "handler timed out"
        else:
            detail = (message or (str(exc) if exc else "") or "unreadable request").strip()
            text = "bad request: " + detail.splitlines()[0][:200]
            log.info("api.refused", status=status, reason=text, peer=request.remote)
        resp = json_error(status, text)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    """A ``web.Server`` whose connections are handled by ``JsonErrorHandler``."""

    def __init__(self, made: web.Server, **handler_kwargs: Any) -> None:
        super().__init__(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **handler_kwargs,
        )
        self.handler_kwargs = handler_kwargs

    def __call__(self) -> RequestHandler:
        return JsonErrorHandler(self, loop=asyncio.get_running_loop(), **self.handler_kwargs)


class _Runner(web.AppRunner):
    """``AppRunner`` (no access log) serving through ``_JsonErrorServer``."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts and freezes the app
        return _JsonErrorServer(made, access_log=None)
