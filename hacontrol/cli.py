"""The ``hacontrol`` command line: run the daemon, check a config, status, reload, drills, version.

``hacontrol run -c FILE [--dry-run]`` starts the daemon (hacontrol.daemon); ``check`` validates a
file and prints every error, then their count; ``version`` (or ``--version``) prints the version;
``status``, ``reload`` and ``drill handover|fault`` talk to a running daemon's API over TCP or its
unix socket (plain ``http.client``, no event loop); with ``-c`` they read only the file's
``api`` section and open no secret file (an operator may not read the HA key; a file the daemon
would refuse still names the daemon, which then judges it); ``reload`` exits with the daemon's
verdict (0 applied, 1 refused, 2 unreachable); ``lab`` hands over to
``hacontrol.lab.demo:main`` when present. This module parses the command line and runs the
local commands; the commands that talk to the daemon, and the API client they share, are
``hacontrol.cli_api``; the readable text of status and drill results is rendered by
``hacontrol.cli_render``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from hacontrol import __version__
from hacontrol.cli_api import (
    DEFAULT_API,
    EXIT_ERROR,
    EXIT_OK,
    api_target,
    cmd_drill,
    cmd_reload,
    cmd_status,
    request,
)
from hacontrol.cli_overrides import add_parsers

__all__ = ["main", "parser"]


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

    add_parsers(sub, api_opts, api_target, request)  # drain, disable, ..., diff

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
