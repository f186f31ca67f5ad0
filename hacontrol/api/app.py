"""The HTTP API (aiohttp): routes, JSON errors, token check, and the listener (TCP or unix socket).

The API holds no logic: it reads the status view of a ``Controller`` (the daemon) and forwards
commands to it. Every error is a JSON body ``{"error": ..., "status": n}``; a 500 never carries a
traceback (that goes to the log as ``api.error``). The routes are described in
``hacontrol/api/openapi.yaml`` (served at ``GET /v1/openapi.yaml``); a unit test keeps the two in
step.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from hacontrol import logs
from hacontrol.ha.runner import DrillError
from hacontrol.model import host_port

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logs.get("api")


class Controller(Protocol):
    """What the API needs from the daemon."""

    def status(self) -> dict[str, Any]:
        """The status document (see hacontrol.status.build_status)."""

    def metrics_text(self) -> bytes:
        """Prometheus text exposition."""

    def token(self) -> str | None:
        """The API token mutating calls need, or None when api.token_file is not set."""

    async def reload(self, reason: str) -> dict[str, Any]:
        """Reload the config file. Returns {"result": "ok"|"error", ...}; "errors" on error."""

    async def drill(self, kind: str, seconds: float | None = None) -> dict[str, Any]:
        """Run an HA drill ("handover", or "fault" for ``seconds``): the runner's timeline.
        Raises DrillError (409: no HA, not active, no peer) or ValueError (400: bad seconds)."""


CONTROLLER = web.AppKey("controller", Controller)


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    headers = extra.pop("headers", None)
    return web.json_response(
        {"error": message, "status": status, **extra}, status=status, headers=headers
    )


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into a JSON body; keep Allow on 405; never leak a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {}
        if "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        text = exc.text or ""
        message = exc.reason.lower() if not text or text.startswith(f"{exc.status}:") else text
        return json_error(exc.status, message, headers=headers or None)
    except Exception as exc:
        log.error(
            "api.error",
            method=request.method,
            path=request.path,
            reason=f"{type(exc).__name__}: {exc}",
            exc_info=True,
        )
        return json_error(500, "internal error")


def _local_transport(request: web.Request) -> bool:
    """True when the request came in on a unix socket or a loopback TCP listener."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if isinstance(sockname, str | bytes):  # AF_UNIX
        return True
    if isinstance(sockname, tuple) and sockname:
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(str(sockname[0]).split("%")[0]).is_loopback
    return False


def _check_token(request: web.Request) -> None:
    """Mutating calls need the bearer token of api.token_file; without a token file they are
    accepted only on a unix socket or a loopback listener (403 elsewhere)."""
    expected = request.app[CONTROLLER].token()
    if expected is None:
        if not _local_transport(request):
            raise web.HTTPForbidden(
                text="no api.token_file is configured: mutating calls are accepted only on a "
                "unix socket or a loopback listener"
            )
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise web.HTTPUnauthorized(text="missing bearer token")
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise web.HTTPUnauthorized(text="bad token")


def _only_params(request: web.Request, allowed: Iterable[str]) -> None:
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown query parameter(s): {', '.join(unknown)}")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object body; {} when empty. 400 on anything else."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return body


async def _command_body(request: web.Request, fields: Iterable[str]) -> dict[str, Any]:
    """The checks every mutating call makes, in order: no query parameters, the token, a JSON
    object body holding only ``fields`` (400/401/403 otherwise)."""
    _only_params(request, ())
    _check_token(request)
    body = await _json_body(request)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown field(s): {', '.join(unknown)}")
    return body


async def healthz(request: web.Request) -> web.Response:
    _only_params(request, ())
    return web.json_response({"status": "ok"})


async def get_status(request: web.Request) -> web.Response:
    _only_params(request, ("service",))
    doc = request.app[CONTROLLER].status()
    name = request.query.get("service")
    if name is not None:
        found = [s for s in doc["services"] if s["name"] == name]
        if not found:
            raise web.HTTPNotFound(text=f"no service named {name!r}")
        doc = {**doc, "services": found}
    return web.json_response(doc)


async def get_metrics(request: web.Request) -> web.Response:
    _only_params(request, ())
    return web.Response(
        body=request.app[CONTROLLER].metrics_text(), headers={"Content-Type": METRICS_CONTENT_TYPE}
    )


async def post_reload(request: web.Request) -> web.Response:
    body = await _command_body(request, ("reason",))
    reason = body.get("reason", "api")
    if not isinstance(reason, str) or not reason or len(reason) > 200:
        raise web.HTTPBadRequest(text="reason must be a non-empty string of at most 200 chars")
    outcome = await request.app[CONTROLLER].reload(f"api: {reason}" if reason != "api" else reason)
    if outcome.get("result") == "busy":  # another reload is still parsing: nothing started
        return json_error(409, "reload in progress", digest=outcome.get("digest"))
    if outcome.get("result") == "error":
        return json_error(
            422,
            "config refused",
            **{k: v for k, v in outcome.items() if k not in ("error", "status")},
        )
    return web.json_response(outcome)


async def _drill(request: web.Request, kind: str, seconds: float | None) -> web.Response:
    try:
        outcome = await request.app[CONTROLLER].drill(kind, seconds)
    except DrillError as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(outcome)


async def post_drill_handover(request: web.Request) -> web.Response:
    await _command_body(request, ())
    return await _drill(request, "handover", None)


async def post_drill_fault(request: web.Request) -> web.Response:
    body = await _command_body(request, ("seconds",))
    seconds = body.get("seconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or not 0 < seconds <= 600
    ):
        raise web.HTTPBadRequest(text="seconds: a number > 0 and <= 600 is required")
    return await _drill(request, "fault", float(seconds))


def openapi_text() -> str:
    return resources.files("hacontrol.api").joinpath("openapi.yaml").read_text()


async def get_openapi(request: web.Request) -> web.Response:
    _only_params(request, ())
    return web.Response(text=openapi_text(), content_type="application/yaml")


ROUTES: tuple[web.RouteDef, ...] = (
    web.get("/healthz", healthz, allow_head=False),
    web.get("/v1/status", get_status, allow_head=False),
    web.get("/metrics", get_metrics, allow_head=False),
    web.post("/v1/reload", post_reload),
    web.post("/v1/drill/handover", post_drill_handover),
    web.post("/v1/drill/fault", post_drill_fault),
    web.get("/v1/openapi.yaml", get_openapi, allow_head=False),
)


def create_app(
    controller: Controller, extra_routes: Iterable[web.RouteDef] = ()
) -> web.Application:
    """The aiohttp application. ``extra_routes``: routes other components add (HA drills); each
    must be described in openapi.yaml as well."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024)
    app[CONTROLLER] = controller
    app.add_routes(ROUTES)
    app.add_routes(list(extra_routes))
    return app


def route_table(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves."""
    out = set()
    for r in app.router.routes():
        info = r.resource.get_info() if r.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and r.method != "*":
            out.add((r.method, str(path)))
    return out


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


class ApiServer:
    """Serves an app on TCP host:port or a unix socket (mode 0660, parent dir created)."""

    def __init__(
        self,
        app: web.Application,
        listen: str,
        socket_mode: int = 0o660,
        shutdown_timeout: float = 0.3,
    ) -> None:
        self.app = app
        self.shutdown_timeout = shutdown_timeout  # in-flight requests get this long on stop
        self.listen = listen
        self.socket_mode = socket_mode
        self._runner: web.AppRunner | None = None
        self._unix_path: str | None = None
        self.bound: str = ""  # the actual address once started (the real port when 0 was asked)

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=self.shutdown_timeout
        )
        await runner.setup()
        try:
            site: web.BaseSite
            if host == "unix":
                path = str(port)
                Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                _refuse_live_socket(path)
                old_umask = os.umask(0o117)
                try:
                    site = web.UnixSite(runner, path)
                    await site.start()
                finally:
                    os.umask(old_umask)
                os.chmod(path, self.socket_mode)
                self._unix_path = path
                self.bound = f"unix:{path}"
            else:
                assert isinstance(port, int)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
                server = site._server
                sockets = getattr(server, "sockets", None) or []
                real_port = sockets[0].getsockname()[1] if sockets else port
                self.bound = host_port(host, real_port)
        except BaseException:
            await runner.cleanup()
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
