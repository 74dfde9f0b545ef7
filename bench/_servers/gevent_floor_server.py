"""The floor of any gevent SMTP server: canned replies, no parsing, no queue.

Usage: ``.venv/bin/python bench/_servers/gevent_floor_server.py PORT``.

Not a contender but a yardstick.  It answers every command line with a fixed
reply (EHLO with a fixed capability list, DATA with 354, the end of the data
with 250) and discards the message: it parses nothing, stores nothing,
applies no limit and keeps no per-message state beyond "in DATA or not".
What it costs per message is what gevent and the kernel charge for the
socket work a client like ``smtp-source`` (one command, one reply, no
pipelining) forces on *any* server in this runtime: the ``recv`` and
``send`` system calls and the hub switch while waiting for the next command.
A real server cannot go below it, so it bounds what ratios against
python-slimta are reachable at all (see "Where the time goes" in
bench/RESULTS.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_port, raise_fd_limit, ready, send
from gevent.server import StreamServer

BANNER = b"220 floor ESMTP\r\n"
EHLO = b"250-floor\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10240000\r\n250 ENHANCEDSTATUSCODES\r\n"
OK = b"250 2.0.0 Ok\r\n"
GO_AHEAD = b"354 Go ahead\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"
BYE = b"221 2.0.0 Bye\r\n"
END_OF_DATA = b"\r\n.\r\n"


def handle(sock, _address) -> None:
    sock.sendall(BANNER)
    buf = b""
    in_data = False
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        out = []
        while True:
            if in_data:
                end = buf.find(END_OF_DATA)
                if end < 0:
                    # Keep the tail that could start the terminator.
                    buf = buf[-4:]
                    break
                buf = buf[end + 5 :]
                in_data = False
                out.append(QUEUED)
                continue
            eol = buf.find(b"\n")
            if eol < 0:
                break
            verb = buf[:4].upper()
            buf = buf[eol + 1 :]
            if verb in (b"EHLO", b"HELO"):
                out.append(EHLO)
            elif verb == b"DATA":
                # The blank line before the terminator is the CRLF this
                # command line ended with: start the search from it.
                buf = b"\r\n" + buf
                in_data = True
                out.append(GO_AHEAD)
            elif verb == b"QUIT":
                sock.sendall(b"".join(out) + BYE)
                return
            else:
                out.append(OK)
        if out:
            send(sock, b"".join(out))


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    server = StreamServer(("127.0.0.1", port), handle, backlog=4096)
    server.start()
    ready("gevent canned replies")
    server.serve_forever()


if __name__ == "__main__":
    main()
