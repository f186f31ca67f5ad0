"""The override subcommands: ``drain``, ``disable``, ``enable``, ``weight``, ``clear``,
``overrides`` and ``diff``.

Each is one call to the running daemon's API (``POST /v1/overrides``, ``GET /v1/overrides``,
``POST /v1/diff``); the mutating ones send the token (``--token-file``, else the config's
``api.token_file``). ``hacontrol diff -c NEW.yaml`` sends the new file's text: the daemon parses
it in its reload child and answers what a reload would change in the kernel and the VIP set,
with the overrides and the health verdicts it has now (see docs/api.md). The plumbing (where
the API is, the call itself) is hacontrol.cli's, handed to ``add_parsers``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

from hacontrol.config.scalars import DURATION_RE, UNITS

Target = Callable[[argparse.Namespace, TextIO, bool], "tuple[str, str | None] | None"]
Request = Callable[..., "dict[str, Any] | int"]
EXIT_OK, EXIT_ERROR = 0, 1


def duration(text: str) -> float:
    """Seconds from "90", "30s", "5m", "1h" (argparse type)."""
    m = DURATION_RE.fullmatch(text.strip())
    if m is None or m.group(1):
        raise argparse.ArgumentTypeError(f"not a duration like 30s or 5m: {text!r}")
    return float(m.group(2)) * UNITS[m.group(3)]


def render_overrides(doc: dict[str, Any]) -> str:
    lines = [f"node {doc.get('node')}  counter {doc.get('counter')}"]
    for o in doc.get("overrides", []):
        line = f"  {o['service']} {o['real_server']}: {o['state']}"
        if o.get("weight") is not None:
            line += f" weight={o['weight']}"
        d = o.get("drain")
        if d:
            left = "?" if d["connections"] is None else d["connections"]
            line += f" connections={left} deadline_in={d['deadline_in']:.0f}s"
            if d.get("ended"):
                line += f" ended={d['ended']}"
        lines.append(f"{line}  ({o['version']})")
    for lv in doc.get("leaving", []):
        left = "?" if lv["connections"] is None else lv["connections"]
        lines.append(f"  {lv['service']} {lv['real_server']}: leaving (not in the config) "
                     f"connections={left} deadline_in={lv['deadline_in']:.0f}s")  # fmt: skip
    if len(lines) == 1:
        lines.append("  no overrides")
    rep = doc.get("replication")
    if rep:  # the HA peer's copy (hacontrol.overrides.replicate)
        agree = {True: "agrees", False: "differs"}.get(rep.get("agree"), "not heard yet")
        ago = rep.get("last_sync_ago")
        since = "" if ago is None else f", last agreed {ago:.1f}s ago"
        lines.append(f"replication: peer {rep.get('peer') or '?'} {agree}{since}")
    return "\n".join(lines)


def render_diff(doc: dict[str, Any]) -> str:
    lines = [f"{doc['count']} kernel change(s)"]
    lines += [f"  {c}" for c in doc["changes"]]
    for lv in doc.get("leaving", []):
        lines.append(f"  drained, not cut: {lv}")
    vips = doc.get("vips", {})
    for v in vips.get("add", []):
        lines.append(f"  vip add {v}")
    for v in vips.get("remove", []):
        lines.append(f"  vip remove {v}")
    return "\n".join(lines)


def add_parsers(
    sub: Any, api_opts: Callable[[argparse.ArgumentParser], None], target: Target,
    request: Request,
) -> None:  # fmt: skip
    """Add the subcommands to ``sub`` (the main parser's subparsers)."""

    def send(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        got = target(args, err, True)
        if got is None:
            return EXIT_ERROR
        body: dict[str, Any] = {"action": args.command, "service": args.service}
        if args.real_server:
            body["real_server"] = args.real_server
        if args.command == "weight":
            body["weight"] = args.weight
        if getattr(args, "deadline", None) is not None:
            body["deadline"] = args.deadline
        doc = request(got[0], "/v1/overrides", err, args.timeout, body=body, token=got[1])
        if isinstance(doc, int):
            return doc
        for o in doc.get("set", []):
            print(f"ok: {o['service']} {o['server']}: {o['action']} "
                  f"(version {o['version'][1]}#{o['version'][0]})", file=out)  # fmt: skip
        return EXIT_OK

    def show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        got = target(args, err, False)
        if got is None:
            return EXIT_ERROR
        doc = request(got[0], "/v1/overrides", err, args.timeout)
        if isinstance(doc, int):
            return doc
        print(json.dumps(doc, indent=2) if args.json else render_overrides(doc), file=out)
        return EXIT_OK

    def diff(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        try:
            with open(args.config) as f:
                text = f.read()
        except OSError as exc:
            print(f"{args.config}: {exc.strerror or exc}", file=err)
            return EXIT_ERROR
        got = target(args, err, True)
        if got is None:
            return EXIT_ERROR
        timeout = max(args.timeout, 40.0)  # the daemon's parse may take its 30 s
        doc = request(got[0], "/v1/diff", err, timeout, body={"config": text}, token=got[1])
        if isinstance(doc, int):
            return doc
        print(json.dumps(doc, indent=2) if args.json else render_diff(doc), file=out)
        return EXIT_OK

    for action, what in (
        ("drain", "weight 0 now, removed when its connections end or at --deadline"),
        ("disable", "remove a real server (or every one of a service) now"),
        ("enable", "back to the configured values (recorded: wins over an older override)"),
        ("weight", "set the weight of a real server (or every one of a service)"),
        ("clear", "forget the override"),
    ):
        sp = sub.add_parser(action, help=what)
        api_opts(sp)
        sp.add_argument("--token-file", help="API token (default: the config's api.token_file)")
        sp.add_argument("service", help="service name")
        sp.add_argument("real_server", nargs="?", help="address:port (default: every one)")
        if action == "weight":
            sp.add_argument("--set", dest="weight", type=int, required=True, help="the weight")
        if action == "drain":
            sp.add_argument("--deadline", type=duration, help="cut at the latest after (5m)")
        sp.set_defaults(func=send)

    sp = sub.add_parser("overrides", help="list the overrides of a running daemon")
    api_opts(sp)
    sp.add_argument("--json", action="store_true", help="print the raw document")
    sp.set_defaults(func=show)

    sp = sub.add_parser("diff", help="what a reload to -c NEW.yaml would change, before it")
    api_opts(sp)
    sp.add_argument("--token-file", help="API token (default: the new file's api.token_file)")
    sp.add_argument("--json", action="store_true", help="print the raw document")
    sp.set_defaults(func=diff)
