"""Probes, one attempt each, against servers on loopback in this process (asyncio and uvloop).

Also the HTTP response reader on whole responses (table-driven; every framing case:
test_http_chunked.py) and request building.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from hacontrol.health.exec import ExecProbe, build_argv
from hacontrol.health.http import BODY_CAP, HttpProbe, HttpReader, HttpSpec, HttpsProbe
from hacontrol.health.tcp import Poller, Probe, TcpProbe
from hacontrol.model import CheckConfig

# Both loops: the daemon runs on uvloop when available, stock asyncio otherwise. (Overriding
# event_loop_policy is deprecated in pytest-asyncio 1.x in favour of a conftest hook that would
# apply to every test; kept local to this module until that hook exists.)
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy"')

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


async def attempt(probe: Probe, limit: float = 5.0) -> tuple[bool, str]:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[tuple[bool, str]] = loop.create_future()
    poller = Poller(loop)
    try:
        probe.start(poller, lambda ok, reason: fut.set_result((ok, reason)))
        return await asyncio.wait_for(fut, limit)
    finally:
        poller.close()


async def eventually(pred: Callable[[], bool], limit: float) -> bool:
    """Poll ``pred`` until true or ``limit`` seconds passed."""
    for _ in range(int(limit / 0.01)):
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


class Server:
    def __init__(self) -> None:
        self.port = 0
        self.stuck: list[asyncio.StreamWriter] = []
        self.requests: list[bytes] = []


def http_handler(srv: Server, response: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            srv.requests.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a tcp check, or a client that left after the status line (RST)
        writer.close()

    return handle


@contextlib.asynccontextmanager
async def serve(handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    srv = Server()
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        for w in srv.stuck:
            w.close()
        server.close()


def resp(status: str, body: bytes, length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_tcp_connected_and_refused() -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    async with serve(handle) as srv:
        assert await attempt(TcpProbe("127.0.0.1", srv.port)) == (True, "connected")
    assert await attempt(TcpProbe("127.0.0.1", free_port())) == (False, "connection refused")


async def test_ipv6_tcp_and_http() -> None:
    srv0 = Server()
    server = await asyncio.start_server(http_handler(srv0, resp("200 OK", b"v6")), "::1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await attempt(TcpProbe("::1", port)) == (True, "connected")
        check = CheckConfig(type="http", expect_body="v6")
        probe = HttpProbe(HttpSpec(check, "::1", port, tls=False), "::1", port)
        assert await attempt(probe) == (True, "status 200, body matched")
        assert f"Host: [::1]:{port}\r\n".encode() in srv0.requests[-1]
    finally:
        server.close()


async def test_tcp_cancel_releases_socket() -> None:
    p = TcpProbe("127.0.0.1", free_port())
    poller = Poller(asyncio.get_running_loop())
    fds = len(os.listdir("/proc/self/fd"))
    called: list[object] = []
    p.start(poller, lambda ok, r: called.append(r))
    p.cancel()
    await asyncio.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds
    poller.close()
    assert called in ([], ["connection refused"])  # refused synchronously, or never reported


def spec(**kw: object) -> HttpSpec:
    return HttpSpec(CheckConfig(type="http", **kw), "127.0.0.1", 8080, tls=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "response", "body", "length", "want"),
    [
        ({}, "200 OK", b"rs1\n", True, (True, "status 200")),
        ({}, "503 Service Unavailable", b"", True, (False, "status 503 (expected 200)")),
        ({"expect_status": (200, 204)}, "204 No Content", b"", True, (True, "status 204")),
        (
            {"expect_status": (200, 204)},
            "500 X",
            b"",
            True,
            (False, "status 500 (expected 200,204)"),
        ),
        (
            {"expect_body": "rs1"},
            "200 OK",
            b"hello rs1\n",
            True,
            (True, "status 200, body matched"),
        ),
        ({"expect_body": "ok"}, "200 OK", b"fail\n", True, (False, "body did not match 'ok'")),
        ({"expect_body": "ok"}, "200 OK", b"fine ok\n", False, (True, "status 200, body matched")),
        (
            {"expect_regex": r"^up \d+$"},
            "200 OK",
            b"up 42",
            True,
            (True, "status 200, body matched"),
        ),
        (
            {"expect_regex": r"^up \d+$"},
            "200 OK",
            b"down",
            True,
            (False, r"body did not match /^up \d+$/"),
        ),
        ({"expect_body": "ok"}, "503 X", b"ok", True, (False, "status 503 (expected 200)")),
    ],
)
async def test_http_verdicts(
    kw: dict[str, object], response: str, body: bytes, length: bool, want: tuple[bool, str]
) -> None:
    async with serve(http_handler(Server(), resp(response, body, length=length))) as srv:
        check = CheckConfig(type="http", **kw)  # type: ignore[arg-type]
        got = await attempt(
            HttpProbe(HttpSpec(check, "127.0.0.1", srv.port, tls=False), "127.0.0.1", srv.port)
        )
        assert got == want


async def test_http_request_bytes_and_host() -> None:
    srv0 = Server()
    async with serve(http_handler(srv0, resp("200 OK", b"x"))) as srv:
        check = CheckConfig(type="http", method="head", path="/health?x=1", host="app.example")
        assert (
            await attempt(
                HttpProbe(HttpSpec(check, "127.0.0.1", srv.port, tls=False), "127.0.0.1", srv.port)
            )
        )[0]
        req = srv0.requests[-1]
        assert req.startswith(b"HEAD /health?x=1 HTTP/1.1\r\nHost: app.example\r\n")
        assert b"Connection: close\r\n" in req
    assert b"Host: 192.0.2.1\r\n" in HttpSpec(CheckConfig(), "192.0.2.1", 80, tls=False).request
    assert (
        b"Host: [2001:db8::1]:8443\r\n"
        in HttpSpec(CheckConfig(), "2001:db8::1", 8443, True).request
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"path": "/a\r\nX: y"},
        {"method": "GE T"},
        {"host": "a\nb"},
        {"expect_status": ()},
        {"expect_regex": "("},
    ],
)
def test_http_spec_rejects_bad_input(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="http check"):
        spec(**kw)


@pytest.mark.parametrize(
    ("buf", "eof", "want"),
    [
        (b"", False, None),
        (b"HTTP/1.1 20", False, None),
        (b"", True, (False, "empty response")),
        (b"garbage", True, (False, "invalid response")),
        (b"SSH-2.0-OpenSSH\r\n", False, (False, "invalid response (not HTTP)")),
        (b"HTTP/1.0 200 OK\n", False, (True, "status 200")),
        (b"x" * 9000, False, (False, "invalid response (no status line)")),
    ],
)
def test_judge_edges(buf: bytes, eof: bool, want: tuple[bool, str] | None) -> None:
    assert HttpReader(spec()).feed(buf, eof) == want


def judge(s: HttpSpec, buf: bytes, eof: bool) -> tuple[bool, str] | None:
    """The verdict on a whole response received so far, in one read."""
    return HttpReader(s).feed(buf, eof)


def test_judge_body_waits_for_content_length_or_eof() -> None:
    s = spec(expect_body="needle")
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    assert judge(s, head + b"nee", False) is None
    assert judge(s, head + b"needle....", False) == (True, "status 200, body matched")
    nolen = b"HTTP/1.1 200 OK\r\n\r\nneedle"
    assert judge(s, nolen, False) is None
    assert judge(s, nolen, True) == (True, "status 200, body matched")
    big = b"HTTP/1.1 200 OK\r\n\r\n" + b"y" * (70 * 1024)
    assert judge(s, big, False) == (False, "body larger than 65536 bytes")  # capped: a clear fail


async def test_http_no_answer_then_cancel() -> None:
    srv0 = Server()

    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv0.stuck.append(w)

    async with serve(hang) as srv:
        p = HttpProbe(spec(), "127.0.0.1", srv.port)
        got: list[object] = []
        poller = Poller(asyncio.get_running_loop())
        p.start(poller, lambda ok, r: got.append(r))
        assert await eventually(lambda: bool(srv0.stuck), 5)
        await asyncio.sleep(0.05)
        assert p.cancel() == "no response"
        assert got == []
        poller.close()


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
BIG_CHUNK = b"%x\r\n%s\r\n" % (16 * 1024, b"n" * 16 * 1024)


def pieces_handler(pieces: list[bytes]) -> Handler:
    """A real server that sends its response in ``pieces``, each its own write (no Nagle), with
    a turn of the event loop in between so the probe can read them one by one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            sock = writer.get_extra_info("socket")
            if sock is not None and writer.get_extra_info("sslcontext") is None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the probe had its verdict and reset the connection
        writer.close()

    return handle


CHUNKED_CASES = {
    # the needle split across two chunks, a chunk extension, a trailer field
    "match split across chunks": (
        [CHUNKED_HEAD, b"4\r\nxxne\r\n", b"4;ext=1\r\nedle", b"\r\n0\r\nX-T: y\r\n\r\n"],
        (True, "status 200, body matched"),
    ),
    # the reads split inside the chunk-size lines too
    "split inside size lines": (
        [CHUNKED_HEAD + b"4", b"\r\nxxne\r\n4", b";a=\"b;c\"\r\nedle\r\n0\r\n", b"\r\n"],
        (True, "status 200, body matched"),
    ),
    "malformed chunk size": (
        [CHUNKED_HEAD, b"4\r\nxxne\r\n", b"zz\r\nedle\r\n0\r\n\r\n"],
        (False, "invalid response (Invalid character in chunk size)"),
    ),
    "oversized body": (
        [CHUNKED_HEAD, *[BIG_CHUNK] * 4, b"1\r\nn\r\n", b"6\r\nneedle\r\n0\r\n\r\n"],
        (False, f"body larger than {BODY_CAP} bytes"),
    ),
    "closed before the last chunk": (
        [CHUNKED_HEAD, b"6\r\nneedle\r\n"],
        (False, "body incomplete: connection closed after 6 bytes"),
    ),
}


@pytest.mark.parametrize("case", sorted(CHUNKED_CASES))
async def test_http_chunked_real_server(case: str) -> None:
    pieces, want = CHUNKED_CASES[case]
    async with serve(pieces_handler(pieces)) as srv:
        check = CheckConfig(type="http", expect_body="needle")
        probe = HttpProbe(HttpSpec(check, "127.0.0.1", srv.port, tls=False), "127.0.0.1", srv.port)
        assert await attempt(probe) == want


def make_cert(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = tmp / "cert.pem", tmp / "key.pem"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@pytest.mark.parametrize(
    ("verify", "want_ok", "want"),
    [
        (False, True, "status 200, body matched"),
        (True, False, "tls: certificate verify failed"),
    ],
)
async def test_https_verify(tmp_path: Path, verify: bool, want_ok: bool, want: str) -> None:
    crt, pem = make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, pem)
    async with serve(http_handler(Server(), resp("200 OK", b"secure")), ssl_ctx=ctx) as srv:
        check = CheckConfig(type="https", verify_tls=verify, expect_body="secure")
        probe = HttpsProbe(
            HttpSpec(check, "127.0.0.1", srv.port, tls=True), check, "127.0.0.1", srv.port
        )
        ok, reason = await attempt(probe)
        assert ok is want_ok
        assert reason.startswith(want), reason
    await asyncio.sleep(0.05)  # let the server side tls transports finish closing


async def test_https_chunked_real_server(tmp_path: Path) -> None:
    """The TLS path reads through the same decoder: a match split across chunks."""
    crt, pem = make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, pem)
    pieces, want = CHUNKED_CASES["match split across chunks"]
    async with serve(pieces_handler(pieces), ssl_ctx=ctx) as srv:
        check = CheckConfig(type="https", verify_tls=False, expect_body="needle")
        probe = HttpsProbe(
            HttpSpec(check, "127.0.0.1", srv.port, tls=True), check, "127.0.0.1", srv.port
        )
        assert await attempt(probe) == want
    await asyncio.sleep(0.05)  # let the server side tls transports finish closing


async def test_https_refused() -> None:
    check = CheckConfig(type="https")
    port = free_port()
    probe = HttpsProbe(HttpSpec(check, "127.0.0.1", port, tls=True), check, "127.0.0.1", port)
    assert await attempt(probe) == (False, "connection refused")


def test_exec_argv_substitution() -> None:
    argv = build_argv(("check", "--addr={address}", "{port}", "{other}"), "192.0.2.5", 8080)
    assert argv == ("check", "--addr=192.0.2.5", "8080", "{other}")
    with pytest.raises(ValueError):
        build_argv((), "192.0.2.5", 1)


@pytest.mark.parametrize(
    ("command", "want"),
    [
        (("true",), (True, "exit 0")),
        (("false",), (False, "exit 1")),
        (
            (
                sys.executable,
                "-c",
                "import sys; print('out'); sys.stderr.write('x' * 9000 + ' bad tail'); sys.exit(2)",
            ),
            (False, "exit 2: ..." + "x" * 151 + " bad tail"),
        ),
        (("sh", "-c", "echo $0 >&2; exit 4", "{address}"), (False, "exit 4: 192.0.2.9")),
        (
            ("/nonexistent/hc-check",),
            (False, "cannot run /nonexistent/hc-check: no such file or directory"),
        ),
    ],
)
async def test_exec_results(command: tuple[str, ...], want: tuple[bool, str]) -> None:
    assert await attempt(ExecProbe(command, "192.0.2.9", 80)) == want


def _pid_written(pidfile: Path) -> bool:
    return pidfile.exists() and pidfile.read_text().strip() != ""


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for its reaper."""
    try:
        return ") Z " in Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True


async def test_exec_cancel_kills_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    p = ExecProbe(("sh", "-c", script), "127.0.0.1", 1)
    got: list[object] = []
    poller = Poller(asyncio.get_running_loop())
    p.start(poller, lambda ok, r: got.append(r))
    assert await eventually(lambda: _pid_written(pidfile), 10)
    grandchild = int(pidfile.read_text())
    assert not _gone(grandchild)
    p.cancel()
    assert await eventually(lambda: _gone(grandchild), 5)
    assert got == []
    poller.close()
