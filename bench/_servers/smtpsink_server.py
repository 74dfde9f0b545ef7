"""Postfix's C ``smtp-sink`` (accepts and discards): the practical limit.

Usage: ``python3 bench/_servers/smtpsink_server.py PORT``.  Starts
``/usr/sbin/smtp-sink`` as a child, waits until it accepts connections, prints
``READY pid=CHILD`` (the harness measures the child) and stops it on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_port, raise_fd_limit

SINK = "/usr/sbin/smtp-sink"


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    # -u: smtp-sink refuses to run as root without it.  -m: up to 4,000 simultaneous sessions (default 256); backlog 4,096.
    child = subprocess.Popen([SINK, "-u", "nobody", "-m", "4000", f"127.0.0.1:{port}", "4096"])
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    signal.signal(signal.SIGINT, lambda *_: child.terminate())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                probe.recv(512)
                probe.sendall(b"QUIT\r\n")
            break
        except OSError:
            time.sleep(0.05)
    else:
        child.kill()
        sys.exit("smtp-sink did not start")
    sys.stdout.write(f"READY pid={child.pid}\n")
    sys.stdout.flush()
    try:
        child.wait()
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
