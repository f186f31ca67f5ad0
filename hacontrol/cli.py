"""The ``hacontrol`` command line: run the daemon, check a config, status, reload, drills, version.

``hacontrol run -c FILE [--dry-run]`` starts the daemon (hacontrol.daemon); ``check`` validates a
file and prints every error, then their count; ``version`` (or ``--version``) prints the version;
``status``, ``reload`` and ``drill handover|fault`` talk to a running daemon's API over TCP or its
unix socket (plain ``http.client``, no event loop); with ``-c`` they read only the file's
``api`` section and open no secret file (an operator may not read the HA key; a file the daemon
would refuse still names the daemon, which then judges it); ``reload`` exits with the daemon's
verdict (0 applied, 1 refused, 2 unreachable); ``lab`` hands over to
``hacontrol.lab.demo:main`` when present. The readable text of status and drill results is
rendered by ``hacontrol.cli_render``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import importlib.util
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from hacontrol import __version__
from hacontrol.cli_overrides import add_parsers
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


def _load_config(path: str, err: TextIO) -> Any:
    """The config at ``path``, or None after printing its errors and their count."""
    from hacontrol.config import ConfigError, format_errors, load

    try:
        return load(path)
    except ConfigError as exc:
        print(format_errors(exc), file=err)
        return None
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=err)
        return None


def _api_settings(path: str, err: TextIO) -> tuple[str, str | None] | None:
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


def _target(
    args: argparse.Namespace, err: TextIO, with_token: bool
) -> tuple[str, str | None] | None:
    """(API address, token) for a call: from the options, else the config's ``api`` section
    (``_api_settings``), else the default address and no token; None after printing why not.
    ``with_token``: the command sends one (it has ``--token-file``)."""
    token_path: str | None = args.token_file if with_token else None
    api: str | None = args.api
    if args.config and (api is None or (with_token and token_path is None)):
        got = _api_settings(args.config, err)
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


def _request(
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


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _load_config(args.config, err)
    if cfg is None:
        return EXIT_ERROR
    n_rs = sum(len(s.real_servers) for s in cfg.services)
    print(f"ok: {len(cfg.services)} services, {n_rs} real servers", file=out)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    cfg = _load_config(args.config, err)
    if cfg is None:
        return EXIT_ERROR
    from hacontrol import logs
    from hacontrol.daemon import run_daemon

    logs.configure(cfg.logging.level, cfg.logging.format)
    rc = run_daemon(cfg, dry_run=args.dry_run, out=out)
    if args.fast_exit:
        # Everything is stopped and logged: skip the interpreter's teardown of ~400 modules
        # (0.1-0.5 s on a busy host) so that a SIGTERM stop ends well within a second.
        for stream in (out, err, sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(rc)
    return rc


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = _target(args, err, with_token=False)
    if target is None:
        return EXIT_ERROR
    path = "/v1/status" + (f"?service={args.service}" if args.service else "")
    doc = _request(target[0], path, err, args.timeout)
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if args.json else render_status(doc), file=out)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    target = _target(args, err, with_token=True)
    if target is None:
        return EXIT_ERROR
    api, token = target
    doc = _request(api, "/v1/reload", err, args.timeout, body={"reason": "cli"}, token=token)
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
    target = _target(args, err, with_token=True)
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
    doc = _request(api, f"/v1/drill/{args.kind}", err, timeout, body=body, token=token)
    if isinstance(doc, int):
        return doc
    print(json.dumps(doc, indent=2) if args.json else render_drill(doc), file=out)
    return EXIT_OK if doc.get("ok") else EXIT_ERROR


def cmd_version(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    print(f"hacontrol {__version__}", file=out)
    return EXIT_OK


def cmd_lab(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if importlib.util.find_spec("hacontrol.lab.demo") is None:
        print("error: the lab is not available in this installation (hacontrol.lab.demo)", file=err)
        return EXIT_ERROR
    demo = importlib.import_module("hacontrol.lab.demo")
    return int(demo.main(list(args.lab_args)) or 0)


def cmd_import_keepalived(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from hacontrol.migrate.command import run

    return run(args.file, args.output, args.host, args.secret_file, out, err)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hacontrol", description="hacontrol: LVS director controller")
    p.add_argument("--version", action="version", version=f"hacontrol {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def api_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--api",
            help=f"daemon API: host:port or unix:/path (default: the "
            f"config's api.listen with -c, else {DEFAULT_API})",
        )
        sp.add_argument(
            "-c",
            "--config",
            help="read api.listen (and token_file) from this file's api section; the rest of "
            "the file is not checked here, no secret file is read",
        )
        sp.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")

    sp = sub.add_parser("run", help="run the daemon")
    sp.add_argument("-c", "--config", required=True)
    sp.add_argument(
        "--dry-run",
        action="store_true",
        help="in-memory data plane; print every change instead of applying it",
    )
    sp.set_defaults(func=cmd_run, fast_exit=True)

    sp = sub.add_parser("check", help="validate a config file")
    sp.add_argument("-c", "--config", required=True)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("status", help="show a running daemon's status")
    api_opts(sp)
    sp.add_argument("--json", action="store_true", help="print the raw status document")
    sp.add_argument("--service", help="only this service")
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("reload", help="make a running daemon re-read its config")
    api_opts(sp)
    sp.add_argument("--token-file", help="API token (default: the config's api.token_file)")
    sp.set_defaults(func=cmd_reload)

    sp = sub.add_parser("drill", help="HA drills on a running active daemon")
    dsub = sp.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, what in (
        ("handover", "planned handover to the peer (make before break)"),
        ("fault", "behave as dead for --seconds (unplanned-failover rehearsal)"),
    ):
        dp = dsub.add_parser(kind, help=what)
        api_opts(dp)
        dp.add_argument("--token-file", help="API token (default: the config's api.token_file)")
        dp.add_argument("--json", action="store_true", help="print the raw timeline")
        if kind == "fault":
            dp.add_argument("--seconds", type=float, required=True, help="fault length")
        dp.set_defaults(func=cmd_drill)

    sp = sub.add_parser(
        "import-keepalived", help="convert a keepalived.conf (docs/migrate-from-keepalived.md)"
    )
    sp.add_argument("file", help="the keepalived.conf (its includes are read too)")
    sp.add_argument("-o", "--output", help="write the YAML here (default: stdout)")
    sp.add_argument("--host", help="config-id for @host lines (default: this host's name)")
    sp.add_argument("--secret-file", help="ha.secret_file to write (default /etc/hacontrol/ha.key)")
    sp.set_defaults(func=cmd_import_keepalived)

    add_parsers(sub, api_opts, _target, _request)  # drain, disable, ..., diff

    sp = sub.add_parser("version", help="print the version")
    sp.set_defaults(func=cmd_version)

    sp = sub.add_parser(
        "lab", help="network-namespace demo lab (hacontrol.lab.demo)", add_help=False
    )
    sp.add_argument("lab_args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_lab)
    return p


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:  # the usual spelling; "hacontrol version" prints the same
        argv = ["version", *argv[1:]]
    if argv[:1] == ["lab"]:  # everything after "lab" belongs to the lab, options included
        args = argparse.Namespace(func=cmd_lab, lab_args=argv[1:])
    else:
        args = parser().parse_args(argv)
    rc: int = args.func(args, out or sys.stdout, err or sys.stderr)
    return rc
