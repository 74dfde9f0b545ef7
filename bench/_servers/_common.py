"""Helpers shared by the benchmark server scripts (stdlib only, any venv)."""

from __future__ import annotations

import argparse
import os
import resource
import sys


def parse_port(description: str) -> int:
    """Parse the one argument every server script takes: the TCP port."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("port", type=int)
    return parser.parse_args().port


def raise_fd_limit() -> None:
    """Allow a few thousand connections (the idle and burst tests open 1,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def ready(note: str = "") -> None:
    """Tell the harness the server is listening."""
    sys.stdout.write(f"READY pid={os.getpid()} {note}".rstrip() + "\n")
    sys.stdout.flush()


def send(sock: object, data: bytes) -> None:
    """One non-blocking send; ``sendall`` (a ``getsockopt`` call each) only for a rest.

    As slimta's own IO.send does, so that the yardstick servers pay no more
    per reply than the server they are compared with.
    """
    sent = sock.send(data)  # type: ignore[attr-defined]
    if sent < len(data):
        sock.sendall(data[sent:])  # type: ignore[attr-defined]
