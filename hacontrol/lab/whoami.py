"""A TCP service that answers each connection with the address it came from, and its client.

``python -m hacontrol.lab.whoami --listen 203.0.113.2:9000`` serves; ``--ask 203.0.113.2:9000``
connects, prints the answer (the source address the server saw, e.g. after source NAT) and exits
non-zero on failure. Lab and test scaffolding (SNAT tests: which address left the director).
"""

from __future__ import annotations

import argparse
import socket
import sys


def _split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def serve(listen: str) -> None:
    host, port = _split(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((host, port))
        srv.listen(64)
        while True:
            conn, peer = srv.accept()
            with conn:
                conn.sendall(f"{peer[0]}\n".encode())


def ask(target: str, timeout: float = 5.0) -> str:
    """The source address the whoami server at ``target`` saw for this connection."""
    host, port = _split(target)
    with socket.create_connection((host, port), timeout=timeout) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hacontrol.lab.whoami")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--listen", help="address:port to serve on")
    g.add_argument("--ask", help="address:port of a whoami server to ask")
    args = p.parse_args(argv)
    if args.listen:
        serve(args.listen)
        return 0
    try:
        print(ask(args.ask))
    except OSError as e:
        print(f"whoami: {args.ask}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
