"""The command line's API client: how ``status``, ``reload`` and ``drill`` reach a running daemon.

Owns the HTTP calls to the daemon's API (plain ``http.client`` over TCP or a unix socket, no event
loop: ``api_call``, ``ApiError``, ``UnixConnection``), finding the daemon's address and token (the
options, else only the ``api`` section of ``-c FILE``, no secret file opened), and the three
subcommands that talk to it, with their exit codes (0 ok, 1 refused or failed, 2 unreachable).
``hacontrol.cli`` parses the command line and dispatches here; ``hacontrol.cli_render`` renders
the readable text of status and drill results.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
from typing import Any, TextIO

import yaml

from hacontrol.cli_render import render_drill, render_status

DEFAULT_API = "127.0.0.1:9480"
MAX_FILE = 64 << 20  # characters of a config file read for its api section at most
EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE = 0, 1, 2


class UnixConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket (``api.listen: unix:/path``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiError(Exception):
    """The daemon could not be reached, or answered with an error."""

    def __init__(
        self, message: str, status: int | None = None, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


def api_call(
    api: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """One request to the daemon's API; returns (status, JSON body)."""
    from hacontrol.api.app import parse_listen

    try:
        host, port = parse_listen(api)
    except ValueError as exc:
        raise ApiError(str(exc)) from None
    conn: http.client.HTTPConnection
    if host == "unix":
        conn = UnixConnection(str(port), timeout)
    else:
        assert isinstance(port, int)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except OSError as exc:
        raise ApiError(f"cannot reach the daemon at {api}: {exc}") from None
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        raise ApiError(f"{api}: answer is not JSON (HTTP {resp.status})", resp.status) from None
    return resp.status, doc if isinstance(doc, dict) else {"value": doc}


def api_settings(path: str, err: TextIO) -> tuple[str, str | None] | None:
    """(api.listen, api.token_file) of the file at ``path``, read for talking to the daemon:
    only the ``api`` section counts, no secret file is opened (an operator may not read the HA
    key; ``status`` needs none) and the rest of the file may be invalid (``reload`` is how the
    daemon judges it, and it must hear of it). None, after saying why, when even the ``api``
    section cannot be read."""
    from hacontrol.api.app import parse_listen
    from hacontrol.config import ConfigError, load

    try:
        api = load(path, check_files=False).api
        return api.listen, api.token_file
    except ConfigError:
        pass  # refused as a whole: look at the api section alone
    hint = "; give the daemon's address with --api (and --token-file)"
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f.read(MAX_FILE))
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=err)
        return None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{path}: cannot find the API address: not YAML ({why}){hint}", file=err)
        return None
    section = doc.get("api", {}) if isinstance(doc, dict) else None
    section = {} if section is None else section
    listen = section.get("listen", DEFAULT_API) if isinstance(section, dict) else None
    token = section.get("token_file") if isinstance(section, dict) else None
    bad = not isinstance(listen, str) or not (token is None or isinstance(token, str))
    if not bad:
        try:
            parse_listen(str(listen))
        except ValueError:
            bad = True
    if bad:
        print(f"{path}: cannot find the API address: no usable api section{hint}", file=err)
        return None
    return str(listen), token


def api_target(
    args: argparse.Namespace, err: TextIO, with_token: bool
) -> tuple[str, str | None] | None:
    """(API address, token) for a call: from the options, else the config's ``api`` section
    (``api_settings``), else the default address and no token; None after printing why not.
    ``with_token``: the command sends one (it has ``--token-file``)."""
    token_path: str | None = args.token_file if with_token else None
    api: str | None = args.api
    if args.config and (api is None or (with_token and token_path is None)):
        got = api_settings(args.config, err)
        if got is None:
            return None
        api = api or got[0]
        if with_token and token_path is None:
            token_path = got[1]
    api = api or DEFAULT_API
    if token_path is None:
        return api, None
    try:
        with open(token_path) as f:
            return api, f.read().strip()
    except OSError as exc:
        print(f"{token_path}: cannot read the token: {exc.strerror or exc}", file=err)
        return None


def request(
    api: str,
    path: str,
    err: TextIO,
    timeout: float,
    body: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any] | int:
    """One call to the daemon (POST when there is a body): the JSON answer of an HTTP 200, or
    the exit code after printing the error (unreachable, or another status with the answer's
    ``error`` and ``errors`` lines)."""
    try:
        status, doc = api_call(
            api, "GET" if body is None else "POST", path, body=body, token=token, timeout=timeout
        )
    except ApiError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_UNREACHABLE
    if status != 200:
        print(f"error: HTTP {status}: {doc.get('error', doc)}", file=err)
        for line in doc.get("errors", []):
            print(line, file=err)
        return EXIT_ERROR
    return doc


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = api_target(args, err, with_token=False)
    if target is None:
        return EXIT_ERROR
    path = "/v1/status" + (f"?service={args.service}" if args.service else "")
    doc = request(target[0], path, err, args.timeout)
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if args.json else render_status(doc), file=out)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = api_target(args, err, with_token=True)
    if target is None:
        return EXIT_ERROR
    api, token = target
    doc = request(api, "/v1/reload", err, args.timeout, body={"reason": "cli"}, token=token)
    if isinstance(doc, int):
        return doc
    print(
        f"ok: reloaded, digest {str(doc.get('digest', ''))[:12]}"
        + ("" if doc.get("changed", True) else " (no change)"),
        file=out,
    )
    if doc.get("applied_live"):
        print(f"applied live: {', '.join(doc['applied_live'])}", file=out)
    if doc.get("needs_restart"):
        print(f"needs a restart (running values kept): {', '.join(doc['needs_restart'])}",
              file=out)  # fmt: skip
    return EXIT_OK


def cmd_drill(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = api_target(args, err, with_token=True)
    if target is None:
        return EXIT_ERROR
    api, token = target
    body: dict[str, Any] = {}
    timeout = args.timeout
    if args.kind == "fault":
        body["seconds"] = args.seconds
        timeout = max(timeout, args.seconds + 30.0)  # the call answers when the fault ends
    else:
        timeout = max(timeout, 60.0)
    doc = request(api, f"/v1/drill/{args.kind}", err, timeout, body=body, token=token)
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if args.json else render_drill(doc), file=out)
    return EXIT_OK if doc.get("ok") else EXIT_ERROR
