"""The HTTP API (aiohttp): routes, JSON errors, token check, and the listener (TCP or unix socket).

The API holds no logic: it reads the status view of a ``Controller`` (the daemon) and forwards
commands to it. Every error is a JSON body ``{"error": ..., "status": n}``; a 500 never carries a
traceback (that goes to the log as ``api.error``). The routes are described in
``hacontrol/api/openapi.yaml`` (served at ``GET /v1/openapi.yaml``); a unit test keeps the two in
step. The listener, with the JSON answers to requests aiohttp's own parser refuses, is
``hacontrol.api.server`` (``ApiServer`` and ``parse_listen`` are re-exported here).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any, Protocol

from aiohttp import web

from hacontrol import logs
from hacontrol.api.overrides import OVERRIDES, OverrideController
from hacontrol.api.overrides import routes as override_routes
from hacontrol.api.server import ApiServer as ApiServer
from hacontrol.api.server import json_error
from hacontrol.api.server import parse_listen as parse_listen
from hacontrol.dataplane.counters import PlaneCounters
from hacontrol.ha.runner import DrillError

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logs.get("api")


class Controller(Protocol):
    """What the API needs from the daemon."""

    async def status_json(self, service: str | None = None) -> list[bytes] | None:
        """The status document as JSON (see hacontrol.status.build_status) in pieces to send in
        turn, only the service named ``service`` when given (None: there is none). Built in
        slices at a big table."""

    @property
    def counters(self) -> PlaneCounters:
        """The data plane's connection and traffic counters: ``refresh()`` before a status."""

    async def metrics_text(self) -> list[bytes]:
        """Prometheus text exposition in pieces to send in turn (built in slices)."""

    def token(self) -> str | None:
        """The API token mutating calls need, or None when api.token_file is not set."""

    async def reload(self, reason: str) -> dict[str, Any]:
        """Reload the config file. Returns {"result": "ok"|"error", ...}; "errors" on error."""

    async def drill(self, kind: str, seconds: float | None = None) -> dict[str, Any]:
        """Run an HA drill ("handover", or "fault" for ``seconds``): the runner's timeline.
        Raises DrillError (409: no HA, not active, no peer) or ValueError (400: bad seconds)."""


CONTROLLER = web.AppKey("controller", Controller)


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


async def get_status(request: web.Request) -> web.StreamResponse:
    _only_params(request, ("service",))
    await request.app[CONTROLLER].counters.refresh()
    name = request.query.get("service")
    parts = await request.app[CONTROLLER].status_json(name)
    if parts is None:
        raise web.HTTPNotFound(text=f"no service named {name!r}")
    return await _send(request, parts, "application/json; charset=utf-8")


async def get_metrics(request: web.Request) -> web.StreamResponse:
    _only_params(request, ())
    await request.app[CONTROLLER].counters.refresh()
    return await _send(request, await request.app[CONTROLLER].metrics_text(), METRICS_CONTENT_TYPE)


async def _send(request: web.Request, parts: list[bytes], content_type: str) -> web.StreamResponse:
    """A big body (16 MB of series at 36,544 real servers) in its pieces, never joined: each
    write waits while the socket's buffer is full, so the loop runs meanwhile."""
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    resp.content_length = sum(len(p) for p in parts)
    await resp.prepare(request)
    try:
        for part in parts:
            await resp.write(part)
        await resp.write_eof()
    except ConnectionResetError:  # the client left (a scrape timed out): no one to answer
        pass
    return resp


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
    *override_routes(_command_body, _check_token, _only_params),
)


def create_app(
    controller: Controller, extra_routes: Iterable[web.RouteDef] = ()
) -> web.Application:
    """The aiohttp application. ``extra_routes``: routes other components add (HA drills); each
    must be described in openapi.yaml as well."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024)
    app[CONTROLLER] = controller
    if isinstance(controller, OverrideController):
        app[OVERRIDES] = controller
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
