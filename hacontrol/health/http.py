"""HTTP and HTTPS probes: one request on a fresh connection, minimal response parsing.

The request bytes are built once per target (``HttpSpec``), with ``Connection: close``. An
``HttpReader`` reads one response as it arrives: only the status line is parsed, unless a body
match (substring or regex) is configured; then the rest goes through httptools (llhttp), which
decodes ``Transfer-Encoding: chunked`` (extensions, trailers), ``Content-Length`` and
close-delimited bodies, and the match runs over the decoded body once it is complete. A body over
``BODY_CAP`` bytes, a response over ``RESPONSE_CAP`` bytes on the wire, malformed framing (a bad
chunk size) or a body cut short fail with a reason saying so. Plain HTTP runs on the callback
socket machinery of ``TcpProbe`` (no Task); HTTPS uses asyncio's ``create_connection`` with a
shared ``SSLContext`` (one Task per check: TLS costs far more than the Task anyway).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import select
import ssl

import httptools

from hacontrol.health.tcp import Done, Poller, TcpProbe, errno_reason
from hacontrol.model import CheckConfig

__all__ = [
    "BODY_CAP",
    "RESPONSE_CAP",
    "HttpProbe",
    "HttpReader",
    "HttpSpec",
    "HttpsProbe",
    "tls_context",
]

_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
BODY_CAP = 64 * 1024  # bytes of decoded body matched at most; a longer body fails
RESPONSE_CAP = 4 * BODY_CAP  # bytes read at most (headers, chunk framing, body)
_HEAD_CAP = 8 * 1024  # a status line longer than this is not HTTP
_READ_SIZE = 8 * 1024  # per recv: a status line needs one small read; a body takes a few


def _clean(what: str, value: str) -> str:
    if not value or any(c in value for c in "\r\n\0") or (what != "path" and " " in value):
        raise ValueError(f"http check: invalid {what} {value!r}")
    return value


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HttpSpec:
    """What to send and how to judge the answer; built once per target."""

    __slots__ = ("expect", "expect_text", "need_body", "needle", "regex", "request")

    def __init__(self, check: CheckConfig, address: str, port: int, tls: bool) -> None:
        method = _clean("method", check.method.upper())
        path = _clean("path", check.path)
        if check.host:
            host = _clean("host", check.host)
        else:
            ip = ipaddress.ip_address(address)
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            if port != (443 if tls else 80):
                host += f":{port}"
        self.request = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hacontrol-health\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")
        if not check.expect_status:
            raise ValueError("http check: expect_status is empty")
        self.expect = frozenset(check.expect_status)
        self.expect_text = ",".join(str(s) for s in check.expect_status)
        self.needle = check.expect_body.encode() if check.expect_body else None
        try:
            self.regex = re.compile(check.expect_regex) if check.expect_regex else None
        except re.error as e:
            raise ValueError(f"http check: invalid expect_regex {check.expect_regex!r}: {e}") from e
        self.need_body = self.needle is not None or self.regex is not None

    def status(self, head: bytes, eof: bool) -> tuple[bool, str] | int | None:
        """Judge the status line at the start of ``head``: a verdict, the status code when the
        body must be read too, or None while the line is incomplete."""
        nl = head.find(b"\n")
        if nl < 0:
            if eof:
                return False, ("empty response" if not head else "invalid response")
            if len(head) > _HEAD_CAP:
                return False, "invalid response (no status line)"
            return None
        parts = head[:nl].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False, "invalid response (not HTTP)"
        code = int(parts[1])
        if code not in self.expect:
            return False, f"status {code} (expected {self.expect_text})"
        if not self.need_body:
            return True, f"status {code}"
        return code

    def match(self, code: int, body: bytes) -> tuple[bool, str]:
        if self.needle is not None and self.needle not in body:
            return False, f"body did not match {_short(self.needle.decode())!r}"
        if self.regex is not None and not self.regex.search(body.decode("utf-8", "replace")):
            return False, f"body did not match /{_short(self.regex.pattern)}/"
        return True, f"status {code}, body matched"


class _Message:
    """The httptools callbacks of one response: its decoded body, kept up to ``BODY_CAP``."""

    __slots__ = ("chunks", "complete", "framed", "headers_done", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.framed = False  # Content-Length or Transfer-Encoding: the body has a known end
        self.headers_done = False
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size <= BODY_CAP:
            self.chunks.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


def _parser(message: _Message) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(message)
    # a health check reads its own real servers: accept what the old line parser accepted (bare LF
    # line ends) and the whitespace RFC 9112 allows before a chunk extension; stay strict on the
    # framing itself (chunk sizes, Content-Length)
    parser.set_dangerous_leniencies(
        lenient_optional_cr_before_lf=True, lenient_spaces_after_chunk_size=True
    )
    return parser


class HttpReader:
    """One response as it arrives (see the module doc); ``feed`` returns the verdict once known."""

    __slots__ = ("_code", "_head", "_message", "_parser", "_spec", "received")

    def __init__(self, spec: HttpSpec) -> None:
        self._spec = spec
        self.received = 0  # bytes so far
        self._head = b""
        self._code = 0
        self._message: _Message | None = None
        self._parser: httptools.HttpResponseParser | None = None

    def feed(self, data: bytes, eof: bool) -> tuple[bool, str] | None:
        """Take the next bytes (``eof``: the peer closed); the verdict, or None for more."""
        self.received += len(data)
        if self._parser is None:
            head = self._head = self._head + data if self._head else data
            got = self._spec.status(head, eof)
            if not isinstance(got, int):
                return got
            self._code, self._head, data = got, b"", head  # the body is needed: parse it all
            self._message = _Message()
            self._parser = _parser(self._message)
        return self._body(data, eof)

    def _body(self, data: bytes, eof: bool) -> tuple[bool, str] | None:
        msg = self._message
        assert msg is not None and self._parser is not None
        if data:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                return False, "invalid response (protocol upgrade)"
            except httptools.HttpParserError as e:
                if not msg.complete:  # bytes after a complete message do not matter
                    return False, f"invalid response ({e})"
        if msg.size > BODY_CAP:
            return False, f"body larger than {BODY_CAP} bytes"
        if msg.complete:
            return self._spec.match(self._code, b"".join(msg.chunks))
        if self.received > RESPONSE_CAP:
            return False, f"response larger than {RESPONSE_CAP} bytes"
        if not eof:
            return None
        if not msg.headers_done:
            return False, "response headers incomplete"
        if msg.framed:
            return False, f"body incomplete: connection closed after {msg.size} bytes"
        return self._spec.match(self._code, b"".join(msg.chunks))  # close-delimited: complete


class HttpProbe(TcpProbe):
    """Plain HTTP on a fresh non-blocking socket; aborted as soon as the verdict is known."""

    kind = "http"
    __slots__ = ("_out", "_reader", "_spec")

    def __init__(self, spec: HttpSpec, address: str, port: int) -> None:
        super().__init__(address, port)
        self._spec = spec
        self._reader = HttpReader(spec)
        self._out = b""

    def _connected(self) -> None:
        self._reader = HttpReader(self._spec)
        self._out = self._spec.request
        self._send()

    def _send(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            n = sock.send(self._out)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._finish(False, errno_reason(e.errno or 0))
            return
        self._out = self._out[n:]
        poller = self._poller
        if self._out:  # rare: the socket buffer was full
            if self._watch != 1:
                self._watch = 1
                poller.watch(self._fd, _EPOLLOUT, self._send)  # type: ignore[union-attr]
            else:
                poller.rewatch(self._fd, _EPOLLOUT, self._send)  # type: ignore[union-attr]
            return
        if self._watch:
            poller.rewatch(self._fd, _EPOLLIN, self._on_read)  # type: ignore[union-attr]
        else:
            poller.watch(self._fd, _EPOLLIN, self._on_read)  # type: ignore[union-attr]
        self._watch = 2

    def _on_read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if not self._reader.received:
                self._finish(False, errno_reason(e.errno or 0))
                return
            data = b""
        verdict = self._reader.feed(data, not data)
        if verdict is not None:
            self._finish(*verdict)

    def cancel(self) -> str:
        if self._watch == 1 and self._out:
            phase = "sending request"
        elif self._watch == 2:
            phase = "reading response" if self._reader.received else "no response"
        else:
            phase = "connecting" if self._watch == 1 else ""
        self._done = None
        self._release()
        return phase


_contexts: dict[bool, ssl.SSLContext] = {}


def tls_context(verify: bool) -> ssl.SSLContext:
    """One shared client context per verification mode (loading CAs costs milliseconds)."""
    ctx = _contexts.get(verify)
    if ctx is None:
        ctx = ssl.create_default_context()
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[verify] = ctx
    return ctx


def tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or ""
        return "tls: certificate verify failed" + (f": {detail}" if detail else "")
    if isinstance(exc, ssl.SSLError):
        return f"tls: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    if isinstance(exc, OSError) and exc.errno:
        return errno_reason(exc.errno)
    if isinstance(exc, ConnectionError):
        return "connection closed by peer"
    return f"error: {_short(str(exc) or type(exc).__name__, 80)}"


class _TlsAttempt(asyncio.Protocol):
    """One HTTPS attempt: the protocol of its connection, and its state."""

    def __init__(self, spec: HttpSpec, done: Done) -> None:
        self.spec = spec
        self.done: Done | None = done
        self.reader = HttpReader(spec)
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.done is None:  # cancelled while connecting
            self.transport.abort()  # type: ignore[union-attr]
        else:
            self.transport.write(self.spec.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.feed(data, False)

    def eof_received(self) -> bool:
        self.feed(b"", True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.reader.received:
            self.finish(False, tls_reason(exc))
        else:
            self.feed(b"", True)

    def feed(self, data: bytes, eof: bool) -> None:
        if self.done is None:
            return
        verdict = self.reader.feed(data, eof)
        if verdict is not None:
            self.finish(*verdict)

    def finish(self, ok: bool, reason: str) -> None:
        done, self.done = self.done, None
        if self.transport is not None:
            self.transport.abort()
        if done is not None:
            done(ok, reason)

    def cancel(self) -> str:
        if self.transport is None:
            phase = "connecting"
        else:
            phase = "reading response" if self.reader.received else "no response"
        self.done = None
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()  # also when the connect finished but its task did not resume
        return phase


class HttpsProbe:
    """HTTPS with TLS verification on or off (``server_hostname`` = the Host or the address)."""

    kind = "https"
    __slots__ = ("_addr", "_attempt", "_ctx", "_hostname", "_spec")

    def __init__(self, spec: HttpSpec, check: CheckConfig, address: str, port: int) -> None:
        self._spec = spec
        self._addr = (str(ipaddress.ip_address(address)), port)
        self._ctx = tls_context(check.verify_tls)
        self._hostname = (check.host or self._addr[0]) if check.verify_tls else None
        self._attempt: _TlsAttempt | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._attempt.task if self._attempt is not None else None

    def start(self, poller: Poller, done: Done) -> None:
        attempt = self._attempt = _TlsAttempt(self._spec, done)
        attempt.task = poller.loop.create_task(self._connect(poller.loop, attempt))

    async def _connect(self, loop: asyncio.AbstractEventLoop, attempt: _TlsAttempt) -> None:
        try:
            await loop.create_connection(
                lambda: attempt,
                self._addr[0],
                self._addr[1],
                ssl=self._ctx,
                server_hostname=self._hostname,
                ssl_handshake_timeout=60,  # the scheduler's deadline sweep cancels far earlier
            )
        except (OSError, ssl.SSLError, ConnectionError, EOFError) as e:
            attempt.finish(False, tls_reason(e))
        finally:
            attempt.task = None

    def cancel(self) -> str:
        attempt, self._attempt = self._attempt, None
        return attempt.cancel() if attempt is not None else ""
