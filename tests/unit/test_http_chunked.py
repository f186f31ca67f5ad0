"""The http check's response reader (``HttpReader``): body framing, caps and reasons, table-driven.

Every case is fed three ways: whole, split in two at every offset, and one byte at a time; the
verdict must not depend on how the bytes arrived (a match split across two chunks, or across two
reads, is still a match). The same reader against real servers: tests/unit/test_health_probes.py.
"""

from __future__ import annotations

import pytest

from hacontrol.health.http import BODY_CAP, RESPONSE_CAP, HttpReader, HttpSpec
from hacontrol.model import CheckConfig

OK = (True, "status 200, body matched")
MISS = (False, "body did not match 'needle'")
CHUNKED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"


def spec(**kw: object) -> HttpSpec:
    check = CheckConfig(type="http", **kw)  # type: ignore[arg-type]
    return HttpSpec(check, "127.0.0.1", 8080, tls=False)


def chunks(*parts: bytes, trailer: bytes = b"") -> bytes:
    """A chunked body of ``parts`` (sizes in hex), the last chunk, optional trailer fields."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


def read(s: HttpSpec, pieces: list[bytes]) -> tuple[bool, str]:
    """Feed ``pieces`` as separate reads, then the end of stream if no verdict came yet."""
    reader = HttpReader(s)
    for piece in pieces:
        verdict = reader.feed(piece, False)
        if verdict is not None:
            return verdict
    verdict = reader.feed(b"", True)
    assert verdict is not None, "no verdict at the end of the stream"
    return verdict


def every_split(s: HttpSpec, response: bytes) -> set[tuple[bool, str]]:
    """The verdicts over all the ways ``response`` can arrive."""
    ways = [[response], [bytes([b]) for b in response]]
    ways += [[response[:i], response[i:]] for i in range(1, len(response))]
    return {read(s, way) for way in ways}


CASES: list[tuple[str, dict[str, object], bytes, tuple[bool, str]]] = [
    # chunked: the match split across two chunks is found in the decoded body
    ("split across chunks", {}, CHUNKED + chunks(b"xx nee", b"dle yy"), OK),
    ("split, three chunks", {}, CHUNKED + chunks(b"ne", b"ed", b"le"), OK),
    # ... and chunk-size lines are not part of the body: "1a" is a size here (26 bytes), not text
    ("size line is not body", {"expect_body": "1a"}, CHUNKED + chunks(b"z" * 26),
     (False, "body did not match '1a'")),
    ("chunk extensions", {},
     CHUNKED + b"3;name=value\r\nnee\r\n3 ;q=\"a;b\";x\r\ndle\r\n0;end\r\n\r\n", OK),
    # llhttp refuses whitespace after the ";" (RFC 9112 allows it; servers do not send it)
    ("chunk extension with space after ;", {}, CHUNKED + b"6; x=1\r\nneedle\r\n0\r\n\r\n",
     (False, "invalid response (Invalid character in chunk extensions)")),
    ("trailer fields", {}, CHUNKED + chunks(b"need", b"le", trailer=b"X-Sum: 1\r\nX-B: 2\r\n"), OK),
    ("chunked, no match", {}, CHUNKED + chunks(b"neeedle"), MISS),
    ("regex over the decoded body", {"expect_regex": r"^up \d+$", "expect_body": None},
     CHUNKED + chunks(b"up ", b"4", b"2"), OK),
    ("gzip, chunked: chunked is decoded", {}, CHUNKED.replace(b"chunked", b"gzip, chunked")
     + chunks(b"needle"), OK),
    # malformed framing: a clear reason, never a match over garbage
    ("bad chunk size", {}, CHUNKED + b"zz\r\nneedle\r\n0\r\n\r\n",
     (False, "invalid response (Invalid character in chunk size)")),
    ("chunk size overflow", {}, CHUNKED + b"fffffffffffffffff\r\nneedle\r\n",
     (False, "invalid response (Chunk size overflow)")),
    ("chunk longer than its size", {}, CHUNKED + b"3\r\nneedle\r\n0\r\n\r\n",
     (False, "invalid response (Expected LF after chunk data)")),
    ("length and chunked", {}, CHUNKED.replace(b"\r\n\r\n", b"\r\nContent-Length: 6\r\n\r\n")
     + chunks(b"needle"),
     (False, "invalid response (Content-Length can't be present with Transfer-Encoding)")),
    ("bad content-length", {}, b"HTTP/1.1 200 OK\r\nContent-Length: 6x\r\n\r\nneedle",
     (False, "invalid response (Invalid character in Content-Length)")),
    # cut short: the body is incomplete, whatever it holds so far
    ("chunked, closed before the last chunk", {}, CHUNKED + b"6\r\nneedle\r\n",
     (False, "body incomplete: connection closed after 6 bytes")),
    ("length, closed early", {}, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nneedle",
     (False, "body incomplete: connection closed after 6 bytes")),
    ("headers cut", {}, b"HTTP/1.1 200 OK\r\nContent-Le", (False, "response headers incomplete")),
    # Content-Length and close-delimited bodies
    ("content-length", {}, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\na needle", OK),
    ("content-length, match after the end", {},
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\na needle", MISS),
    ("close-delimited", {}, b"HTTP/1.0 200 OK\r\nServer: t\r\n\r\nthe needle", OK),
    ("bare LF lines", {}, b"HTTP/1.0 200 OK\nContent-Length: 6\n\nneedle", OK),
    ("no body (204)", {"expect_status": (204,)}, b"HTTP/1.1 204 No Content\r\n\r\n",
     (False, "body did not match 'needle'")),
    # the status decides before any body is read
    ("wrong status", {}, b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     (False, "status 503 (expected 200)")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kw", "response", "want"), CASES, ids=[c[0] for c in CASES])
def test_reader(name: str, kw: dict[str, object], response: bytes, want: tuple[bool, str]) -> None:
    args = {"expect_body": "needle", **kw}
    assert every_split(spec(**args), response) == {want}


@pytest.mark.parametrize(
    "body",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (BODY_CAP + 1) + b"n" * (BODY_CAP + 1),
        CHUNKED + chunks(b"n" * (BODY_CAP // 2), b"n" * (BODY_CAP // 2), b"n"),
        b"HTTP/1.0 200 OK\r\n\r\n" + b"n" * (BODY_CAP + 1),  # close-delimited
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
def test_body_cap(body: bytes) -> None:
    """One byte over the cap fails, as soon as it arrives (no waiting for the end)."""
    reader = HttpReader(spec(expect_body="needle"))
    assert reader.feed(body, False) == (False, f"body larger than {BODY_CAP} bytes")


def test_body_at_the_cap_is_matched() -> None:
    body = b"n" * (BODY_CAP - 6) + b"needle"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert HttpReader(spec(expect_body="needle")).feed(response, False) == OK


def test_response_cap_bounds_chunk_framing() -> None:
    """Tiny chunks with long extensions: little body, much wire; bounded too."""
    chunk = b"1;" + b"e" * 1000 + b"\r\nn\r\n"
    reader = HttpReader(spec(expect_body="needle"))
    verdict = None
    for _ in range(RESPONSE_CAP // len(chunk) + 2):
        verdict = reader.feed(chunk if reader.received else CHUNKED + chunk, False)
        if verdict is not None:
            break
    assert verdict == (False, f"response larger than {RESPONSE_CAP} bytes")


def test_status_only_check_ignores_the_body() -> None:
    """Without a body match only the status line is read: a malformed body is not looked at."""
    assert every_split(spec(), CHUNKED + b"zz\r\n") == {(True, "status 200")}
