"""The HTTP API through aiohttp's test client: routes, JSON errors, token, metrics, the spec."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openapi_spec_validator
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from hacontrol.api.app import (
    CONTROLLER,
    METRICS_CONTENT_TYPE,
    ApiServer,
    _check_token,
    create_app,
    openapi_text,
    parse_listen,
    route_table,
)
from hacontrol.dataplane.counters import PlaneCounters
from hacontrol.ha.runner import DrillError
from hacontrol.metrics import Metrics
from hacontrol.model import Config


class FakeController:
    def __init__(self, token: str | None = None) -> None:
        self._token = token
        self.reloads: list[str] = []
        self.reload_result: dict[str, Any] = {"result": "ok", "digest": "abc", "changed": True}
        self.metrics = Metrics()
        self.metrics.reloads.labels(result="ok").inc()
        self.fail = False
        self.drills: list[tuple[str, float | None]] = []
        self.drill_error: Exception | None = None
        self.counters = PlaneCounters(self)  # no dataplane: no counters
        self.dataplane = self.reconciler = None
        self.config = Config(node_name="d1")

    def status(self) -> dict[str, Any]:
        if self.fail:
            raise RuntimeError("secret internal detail")
        return {
            "node": "d1",
            "role": "standalone",
            "services": [{"name": "web", "real_servers": []}, {"name": "dns", "real_servers": []}],
        }

    async def status_json(self, service: str | None = None) -> list[bytes] | None:
        doc = self.status()
        if service is not None:
            doc = {**doc, "services": [s for s in doc["services"] if s["name"] == service]}
            if not doc["services"]:
                return None
        text = json.dumps(doc).encode()
        return [text[:10], text[10:]]  # sent in pieces

    async def metrics_text(self) -> list[bytes]:
        text = self.metrics.render()
        return [text[:100], text[100:]]

    def token(self) -> str | None:
        return self._token

    async def reload(self, reason: str) -> dict[str, Any]:
        self.reloads.append(reason)
        return self.reload_result

    async def drill(self, kind: str, seconds: float | None = None) -> dict[str, Any]:
        self.drills.append((kind, seconds))
        if self.drill_error is not None:
            raise self.drill_error
        if kind == "fault" and seconds is not None and seconds <= 0.6:
            raise ValueError("seconds must exceed the dead interval (0.6s) and be <= 600")
        return {"drill": kind, "ok": True, "gap": 0.0, "vip_added": 0.003}


@pytest.fixture
async def ctl_client() -> AsyncIterator[tuple[FakeController, TestClient[Any, Any]]]:
    ctl = FakeController(token="s3cret")
    async with TestClient(TestServer(create_app(ctl))) as client:
        yield ctl, client


async def _error(resp: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["status"] == status
    assert isinstance(body["error"], str) and body["error"]
    return body


async def test_healthz_and_status(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    _, client = ctl_client
    r = await client.get("/healthz")
    assert r.status == 200 and await r.json() == {"status": "ok"}
    r = await client.get("/v1/status")
    assert r.status == 200
    doc = await r.json()
    assert doc["node"] == "d1" and len(doc["services"]) == 2
    r = await client.get("/v1/status", params={"service": "dns"})
    assert [s["name"] for s in (await r.json())["services"]] == ["dns"]


async def test_status_errors(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    _, client = ctl_client
    body = await _error(await client.get("/v1/status", params={"service": "nope"}), 404)
    assert "nope" in body["error"]
    body = await _error(await client.get("/v1/status", params={"verbose": "1"}), 400)
    assert "verbose" in body["error"]


async def test_unknown_route_and_method(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    _, client = ctl_client
    await _error(await client.get("/v1/nothing"), 404)
    r = await client.post("/v1/status")
    await _error(r, 405)
    assert "GET" in r.headers["Allow"]
    r = await client.get("/v1/reload")
    await _error(r, 405)
    assert r.headers["Allow"] == "POST"


async def test_metrics_text(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    _, client = ctl_client
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"] == METRICS_CONTENT_TYPE
    text = await r.text()
    assert 'hacontrol_config_reloads_total{result="ok"} 1.0' in text


async def test_reload_token(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    ctl, client = ctl_client
    r = await client.post("/v1/reload")
    await _error(r, 401)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    await _error(await client.post("/v1/reload", headers={"Authorization": "Bearer wrong"}), 401)
    await _error(await client.post("/v1/reload", headers={"Authorization": "Basic s3cret"}), 401)
    assert ctl.reloads == []
    r = await client.post("/v1/reload", headers={"Authorization": "Bearer s3cret"})
    assert r.status == 200 and (await r.json())["digest"] == "abc"
    assert ctl.reloads == ["api"]


async def test_reload_body(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    ctl, client = ctl_client
    auth = {"Authorization": "Bearer s3cret"}
    await _error(await client.post("/v1/reload", data=b"{nope", headers=auth), 400)
    await _error(await client.post("/v1/reload", json=[1], headers=auth), 400)
    await _error(await client.post("/v1/reload", json={"force": True}, headers=auth), 400)
    await _error(await client.post("/v1/reload", json={"reason": 3}, headers=auth), 400)
    assert ctl.reloads == []
    r = await client.post("/v1/reload", json={"reason": "deploy 42"}, headers=auth)
    assert r.status == 200
    assert ctl.reloads == ["api: deploy 42"]


async def test_reload_refused_is_422(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    ctl, client = ctl_client
    ctl.reload_result = {
        "result": "error",
        "errors": ["f.yaml:3: port: not a number"],
        "digest": "old",
    }
    r = await client.post("/v1/reload", headers={"Authorization": "Bearer s3cret"})
    body = await _error(r, 422)
    assert body["errors"] == ["f.yaml:3: port: not a number"]
    assert body["result"] == "error" and body["digest"] == "old"


async def test_no_token_configured_allows_reload() -> None:
    ctl = FakeController(token=None)
    async with TestClient(TestServer(create_app(ctl))) as client:
        r = await client.post("/v1/reload")
        assert r.status == 200 and ctl.reloads == ["api"]


async def test_500_is_json_without_traceback(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    ctl, client = ctl_client
    ctl.fail = True
    r = await client.get("/v1/status")
    body = await _error(r, 500)
    text = str(body)
    assert "secret internal detail" not in text and "Traceback" not in text


async def test_openapi_served(ctl_client: tuple[FakeController, TestClient[Any, Any]]) -> None:
    _, client = ctl_client
    r = await client.get("/v1/openapi.yaml")
    assert r.status == 200
    spec = yaml.safe_load(await r.text())
    assert spec["openapi"].startswith("3.1")


def test_every_route_is_in_the_spec_and_back() -> None:
    spec = yaml.safe_load(openapi_text())
    in_spec = {
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "delete", "patch")
    }
    app = create_app(FakeController())
    assert route_table(app) == in_spec
    # every $ref resolves
    schemas = spec["components"]["schemas"]
    responses = spec["components"]["responses"]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None:
                kind, name = ref.split("/")[-2:]
                assert name in {"schemas": schemas, "responses": responses}[kind], ref
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9480", ("127.0.0.1", 9480)),
        ("[::1]:80", ("::1", 80)),
        ("unix:/run/hacontrol/api.sock", ("unix", "/run/hacontrol/api.sock")),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, Any]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9480", "host:", "host:99999", "unix:relative/path"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match=r"api\.listen"):
        parse_listen(listen)


async def test_unix_socket_server(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "api.sock"
    server = ApiServer(create_app(FakeController()), f"unix:{path}")
    await server.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        conn = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=conn) as s, s.get("http://x/healthz") as r:
            assert r.status == 200
    finally:
        await server.stop()
    assert not path.exists()


async def test_tcp_server_port_zero() -> None:
    server = ApiServer(create_app(FakeController()), "127.0.0.1:0")
    await server.start()
    try:
        assert not server.bound.endswith(":0")
        async with aiohttp.ClientSession() as s, s.get(f"http://{server.bound}/healthz") as r:
            assert r.status == 200
    finally:
        await server.stop()


def test_app_is_an_aiohttp_application() -> None:
    assert isinstance(create_app(FakeController()), web.Application)


async def test_unix_socket_in_use_is_refused_stale_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    first = ApiServer(create_app(FakeController()), f"unix:{path}")
    await first.start()
    try:
        second = ApiServer(create_app(FakeController()), f"unix:{path}")
        with pytest.raises(OSError, match="another process serves"):
            await second.start()
        # the first still answers on its path
        conn = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=conn) as s, s.get("http://x/healthz") as r:
            assert r.status == 200
    finally:
        await first.stop()
    # a stale socket file (nobody listening) is replaced
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert path.is_socket()
    third = ApiServer(create_app(FakeController()), f"unix:{path}")
    await third.start()
    await third.stop()


def test_spec_is_valid_openapi_3_1() -> None:
    openapi_spec_validator.validate(yaml.safe_load(openapi_text()))


AUTH = {"Authorization": "Bearer s3cret"}


async def test_drill_routes_need_the_token(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    ctl, client = ctl_client
    for path, body in (("/v1/drill/handover", None), ("/v1/drill/fault", {"seconds": 2})):
        r = await client.post(path, json=body)
        await _error(r, 401)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        await _error(await client.post(path, json=body, headers={"Authorization": "Bearer x"}), 401)
        await _error(await client.get(path), 405)
    assert ctl.drills == []


async def test_drill_handover_returns_the_timeline(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    ctl, client = ctl_client
    r = await client.post("/v1/drill/handover", headers=AUTH)
    assert r.status == 200 and (await r.json()) == {
        "drill": "handover", "ok": True, "gap": 0.0, "vip_added": 0.003
    }  # fmt: skip
    await _error(await client.post("/v1/drill/handover", json={"x": 1}, headers=AUTH), 400)
    await _error(await client.post("/v1/drill/handover", data=b"{", headers=AUTH), 400)
    await _error(await client.post("/v1/drill/handover?now=1", headers=AUTH), 400)
    assert ctl.drills == [("handover", None)]
    ctl.drill_error = DrillError("this node is backup, not active")
    body = await _error(await client.post("/v1/drill/handover", headers=AUTH), 409)
    assert body["error"] == "this node is backup, not active"


@pytest.mark.parametrize(
    "body",
    [None, {}, {"seconds": "2"}, {"seconds": True}, {"seconds": 0}, {"seconds": -1},
     {"seconds": 601}, {"seconds": 2, "extra": 1}, [2]],
)  # fmt: skip
async def test_drill_fault_validates_seconds(
    ctl_client: tuple[FakeController, TestClient[Any, Any]], body: Any
) -> None:
    ctl, client = ctl_client
    await _error(await client.post("/v1/drill/fault", json=body, headers=AUTH), 400)
    assert ctl.drills == []


async def test_drill_fault_forwards_seconds(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    ctl, client = ctl_client
    r = await client.post("/v1/drill/fault", json={"seconds": 1.5}, headers=AUTH)
    assert r.status == 200 and (await r.json())["drill"] == "fault"
    # the daemon's own check (seconds vs the dead interval) is a 400 too
    body = await _error(
        await client.post("/v1/drill/fault", json={"seconds": 0.5}, headers=AUTH), 400
    )
    assert "dead interval" in body["error"]
    assert ctl.drills == [("fault", 1.5), ("fault", 0.5)]


def _request_on(sockname: Any, token: str | None) -> web.Request:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return sockname if name == "sockname" else default

    app = web.Application()
    app[CONTROLLER] = FakeController(token=token)
    return make_mocked_request("POST", "/v1/reload", app=app, transport=Transport())


@pytest.mark.parametrize(
    ("sockname", "allowed"),
    [("/run/hacontrol/api.sock", True), (("127.0.0.1", 9480), True), (("::1", 9480, 0, 0), True),
     (("192.0.2.1", 9480), False), (("2001:db8::1", 9480, 0, 0), False), (None, False)],
)  # fmt: skip
def test_without_a_token_file_only_local_listeners_mutate(sockname: Any, allowed: bool) -> None:
    req = _request_on(sockname, token=None)
    if allowed:
        _check_token(req)
    else:
        with pytest.raises(web.HTTPForbidden) as info:
            _check_token(req)
        assert "unix socket or a loopback" in (info.value.text or "")
    # with a token file the listener does not matter, the token does
    with pytest.raises(web.HTTPUnauthorized):
        _check_token(_request_on(sockname, token="s3cret"))


def _raw_exchange(host: str, port: int, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``data`` on a fresh TCP connection; (status line, headers, body) of the answer,
    read until the server closes (bounded: 10 s, 1 MB)."""
    with socket.create_connection((host, port), timeout=10) as conn:
        with contextlib.suppress(OSError):  # the server may answer and close mid-send
            conn.sendall(data)
        raw = b""
        while len(raw) < 1 << 20 and (chunk := conn.recv(65536)):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return status, headers, body


HUGE_HEADER = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
MANY_HEADERS = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-H%d: 1\r\n" % i for i in range(200))
    + b"\r\n"
)


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (HUGE_HEADER, "bytes when reading"),
        (MANY_HEADERS, "too many headers"),
        (b"NOT AN HTTP REQUEST\r\n\r\n", "invalid method"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", "bad status line"),
    ],
    ids=["64kb-header", "200-headers", "bad-request-line", "bad-version"],
)
async def test_parser_refusals_are_json_on_a_real_socket(request_bytes: bytes, why: str) -> None:
    """aiohttp's own parser answers these before any middleware; they must be JSON too."""
    server = ApiServer(create_app(FakeController()), "127.0.0.1:0")
    await server.start()
    try:
        host, port = server.bound.rsplit(":", 1)
        status, headers, body = await asyncio.to_thread(
            _raw_exchange, host, int(port), request_bytes
        )
        assert status.split(" ", 2)[1] == "400", status
        assert headers["content-type"].split(";")[0] == "application/json"
        doc = json.loads(body)
        assert doc["status"] == 400 and doc["error"].startswith("bad request: ")
        assert why in doc["error"].lower()
        assert len(body) < 400
        # the server still serves well-formed requests
        ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        status, headers, body = await asyncio.to_thread(_raw_exchange, host, int(port), ok)
        assert status.split(" ", 2)[1] == "200" and json.loads(body) == {"status": "ok"}
    finally:
        await server.stop()


async def test_oversized_body_is_json_413(
    ctl_client: tuple[FakeController, TestClient[Any, Any]],
) -> None:
    _ctl, client = ctl_client
    resp = await client.post(
        "/v1/reload", data=b"x" * (65 * 1024), headers={"Authorization": "Bearer s3cret"}
    )
    await _error(resp, 413)
