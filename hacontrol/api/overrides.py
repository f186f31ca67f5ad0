"""The override routes: ``GET/POST /v1/overrides`` and ``POST /v1/diff`` (see openapi.yaml).

They hold no logic: they check the request (the token for every POST, like every mutating
route: the checks of hacontrol.api.app, passed to ``routes``), then ask the daemon's overrides side
(``OverrideController``). A controller without one (a test double) answers 404.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from hacontrol.api.server import json_error

ACTIONS = ("drain", "disable", "enable", "weight", "clear")
MAX_DIFF_BODY = 16 << 20


@runtime_checkable
class OverrideController(Protocol):
    def override_status(self) -> dict[str, Any]: ...

    def override_command(
        self,
        action: str,
        service: str,
        server: str | None,
        weight: int | None,
        deadline: float | None,
    ) -> dict[str, Any]:
        """ValueError (400) when the command names nothing or has a bad value."""

    async def override_diff(self, text: str) -> dict[str, Any]:
        """ValueError with ``errors`` (422) when the config is refused."""


OVERRIDES = web.AppKey("overrides", OverrideController)


def _controller(request: web.Request) -> OverrideController:
    ctl = request.app.get(OVERRIDES)
    if ctl is None:
        raise web.HTTPNotFound(text="overrides are not available here")
    return ctl


def _deadline(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise web.HTTPBadRequest(text="deadline: a number of seconds >= 0 is required")
    return float(v)


CommandBody = Callable[[web.Request, Iterable[str]], Awaitable[dict[str, Any]]]
Check = Callable[[web.Request], None]
OnlyParams = Callable[[web.Request, Iterable[str]], None]


def routes(
    command_body: CommandBody, check_token: Check, only_params: OnlyParams
) -> tuple[web.RouteDef, ...]:
    """The routes, with the request checks of hacontrol.api.app (passed in: no import cycle)."""

    async def get_overrides(request: web.Request) -> web.Response:
        only_params(request, ())
        return web.json_response(_controller(request).override_status())

    async def post_overrides(request: web.Request) -> web.Response:
        fields = ("action", "service", "real_server", "weight", "deadline")
        body = await command_body(request, fields)
        action, service = body.get("action"), body.get("service")
        server, weight = body.get("real_server"), body.get("weight")
        if action not in ACTIONS:
            raise web.HTTPBadRequest(text=f"action must be one of {', '.join(ACTIONS)}")
        if not isinstance(service, str) or not service:
            raise web.HTTPBadRequest(text="service: a service name is required")
        if server is not None and (not isinstance(server, str) or len(server) > 64):
            raise web.HTTPBadRequest(text="real_server must be address:port")
        if weight is not None and type(weight) is not int:
            raise web.HTTPBadRequest(text="weight must be an integer")
        ctl = _controller(request)
        deadline = _deadline(body.get("deadline"))
        try:
            out = ctl.override_command(action, service, server, weight, deadline)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        return web.json_response(out)

    async def post_diff(request: web.Request) -> web.Response:
        only_params(request, ())
        check_token(request)
        ctl = _controller(request)
        raw = await request.content.read(MAX_DIFF_BODY + 1)
        if len(raw) > MAX_DIFF_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_DIFF_BODY, actual_size=len(raw))
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"body is not valid JSON: {exc}") from None
        text = body.get("config") if isinstance(body, dict) else None
        if not isinstance(body, dict) or set(body) != {"config"} or not isinstance(text, str):
            raise web.HTTPBadRequest(text='body must be {"config": "<the YAML text>"}')
        try:
            out = await ctl.override_diff(text)
        except ValueError as exc:
            errors = getattr(exc, "errors", None)
            if errors is None:
                raise web.HTTPBadRequest(text=str(exc)) from None
            return json_error(422, "config refused", errors=errors)
        return web.json_response(out)

    return (
        web.get("/v1/overrides", get_overrides, allow_head=False),
        web.post("/v1/overrides", post_overrides),
        web.post("/v1/diff", post_diff),
    )
