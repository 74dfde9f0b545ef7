"""Open N idle SMTP sessions (after EHLO) against a child SmtpEdge; report JSON.

``python -m tests.integration.hardening._idle_load N [--limits-off]``: starts
``_edge_child``, measures its VmRSS before and with N sessions open after
EHLO, then times a normal client's whole message while they stay open.
Plain stdlib (no gevent), so that 10,000 sockets are driven by epoll.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import time


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_idle(port: int, n: int, limit: float) -> tuple[list[socket.socket], int]:
    sel = selectors.DefaultSelector()
    socks, state = [], {}
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
            sock.close()
            continue
        socks.append(sock)
        state[sock.fileno()] = [sock, b"", 0]
        sel.register(sock, selectors.EVENT_READ)
    done = 0
    deadline = time.monotonic() + limit
    while state and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            entry = state[key.fd]
            try:
                chunk = entry[0].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                sel.unregister(entry[0])
                del state[key.fd]
                continue
            entry[1] += chunk
            if entry[2] == 0 and b"220 " in entry[1]:
                entry[1], entry[2] = b"", 1
                entry[0].send(b"EHLO idle.test\r\n")
            elif entry[2] == 1 and b"\r\n250 " in b"\r\n" + entry[1]:
                done += 1
                sel.unregister(entry[0])
                del state[key.fd]
    sel.close()
    return socks, done


def normal_message(port: int) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        f = sock.makefile("rb")

        def expect(code: bytes) -> None:
            while True:
                line = f.readline()
                assert line[:3] == code, line
                if line[3:4] == b" ":
                    return

        expect(b"220")
        for cmd, code in [
            (b"EHLO normal.test", b"250"),
            (b"MAIL FROM:<a@b.test>", b"250"),
            (b"RCPT TO:<c@d.test>", b"250"),
            (b"DATA", b"354"),
            (b"Subject: hi\r\n\r\nhello\r\n.", b"250"),
            (b"QUIT", b"221"),
        ]:
            sock.sendall(cmd + b"\r\n")
            expect(code)
    return time.monotonic() - start


def main() -> None:
    n = int(sys.argv[1])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args = [sys.executable, "-m", "tests.integration.hardening._edge_child", *sys.argv[2:]]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split()[1])
        time.sleep(0.3)
        before = rss_kib(child.pid)
        start = time.monotonic()
        socks, done = open_idle(port, n, 20.0)
        opened_in = time.monotonic() - start
        time.sleep(0.5)
        after = rss_kib(child.pid)
        served_in = normal_message(port)
        for sock in socks:
            sock.close()
        print(
            json.dumps(
                {
                    "sessions": done,
                    "opened_in": opened_in,
                    "rss_before_kib": before,
                    "rss_after_kib": after,
                    "kib_per_session": (after - before) / max(done, 1),
                    "normal_client_s": served_in,
                }
            )
        )
    finally:
        child.terminate()
        child.wait(10)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
