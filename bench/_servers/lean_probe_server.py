"""A probe, not a server: the gevent floor plus the least work a real one does.

Usage: ``.venv/bin/python bench/_servers/lean_probe_server.py PORT``
(``PROBE_NO_QUEUE=1``: hand messages to a plain dict instead of the queue).

It answers ``smtp-source`` like ``gevent_floor_server.py`` but also does,
with this repository's own components, the work no complete server can
skip: a re-armed read deadline per read, the RFC 5321 path grammar for MAIL
and RCPT, a :class:`~slimta.smtp.reply.Reply` per command handed to a
handler method (the python-slimta 4.0 handler API), dot-unstuffing,
:class:`~slimta.envelope.Envelope` parsing, the mail-loop ``Received`` count
and ``Queue(DictStorage(), BlackholeRelay()).enqueue``.  It leaves out
everything else a server needs: the session state machine, limits, error
replies, logging, AUTH/TLS/BDAT, validators.  Its CPU per message is
therefore a lower bound for any server built on these parts, which is what
``bench/bench_floor.py`` uses it for.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_port, raise_fd_limit, ready, send
from gevent.server import StreamServer

from slimta.envelope import Envelope
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay.blackhole import BlackholeRelay
from slimta.smtp._grammar import parse_path_argument
from slimta.smtp.reply import Reply
from slimta.smtp.server import _ReadTimer

EHLO = b"250-probe\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 10240000\r\n250 ENHANCEDSTATUSCODES\r\n"
END_OF_DATA = b"\r\n.\r\n"


class DictHandoff:
    """``PROBE_NO_QUEUE=1``: store and forget, to price the queue itself."""

    def __init__(self) -> None:
        self.store: dict[int, Envelope] = {}
        self.count = 0

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str]]:
        self.count += 1
        self.store[self.count] = envelope
        del self.store[self.count]
        return [(envelope, str(self.count))]


class Handlers:
    """The 4.0 handler hooks, accepting everything."""

    def MAIL(self, reply: Reply, address: str, params: dict) -> None:  # noqa: N802
        pass

    def RCPT(self, reply: Reply, address: str, params: dict) -> None:  # noqa: N802
        pass

    def DATA(self, reply: Reply) -> None:  # noqa: N802
        pass


def make_handler(queue: Any):
    def handle(sock: Any, _address: Any) -> None:
        handlers = Handlers()
        timer = _ReadTimer(300.0)
        sock.sendall(b"220 probe ESMTP\r\n")
        buf = b""
        in_data = False
        envelope = Envelope()
        try:
            while True:
                timer.arm()
                try:
                    chunk = sock.recv(65536)
                finally:
                    timer.disarm()
                if not chunk:
                    return
                buf += chunk
                out = []
                while True:
                    if in_data:
                        end = buf.find(END_OF_DATA)
                        if end < 0:
                            break
                        data = buf[2 : end + 2].replace(b"\r\n..", b"\r\n.")
                        buf = buf[end + 5 :]
                        in_data = False
                        envelope.parse(data)
                        envelope.timestamp = time.time()
                        envelope.count_headers("Received")
                        queue.enqueue(envelope)
                        out.append(Reply("250", "2.6.0 Message accepted for delivery").to_bytes())
                        continue
                    eol = buf.find(b"\r\n")
                    if eol < 0:
                        break
                    verb_bytes, _, arg_bytes = buf[:eol].partition(b" ")
                    buf = buf[eol + 2 :]
                    verb = verb_bytes.decode("ascii").upper()
                    arg = arg_bytes.decode("utf-8")
                    if verb in ("EHLO", "HELO"):
                        out.append(EHLO)
                    elif verb == "MAIL":
                        address, _params = parse_path_argument(arg, "FROM", allow_null=True)
                        reply = Reply("250", f"2.1.0 Sender <{address}> Ok")
                        handlers.MAIL(reply, address, {})
                        envelope = Envelope(address)
                        out.append(reply.to_bytes())
                    elif verb == "RCPT":
                        address, _params = parse_path_argument(arg, "TO", allow_null=False)
                        reply = Reply("250", f"2.1.5 Recipient <{address}> Ok")
                        handlers.RCPT(reply, address, {})
                        envelope.recipients.append(address)
                        out.append(reply.to_bytes())
                    elif verb == "DATA":
                        reply = Reply("354", "Start mail input; end with <CRLF>.<CRLF>")
                        handlers.DATA(reply)
                        # The CRLF that ended DATA starts the terminator search.
                        buf = b"\r\n" + buf
                        in_data = True
                        out.append(reply.to_bytes())
                    elif verb == "QUIT":
                        sock.sendall(b"".join(out) + b"221 2.0.0 Bye\r\n")
                        return
                    else:
                        out.append(b"250 2.0.0 Ok\r\n")
                if out:
                    send(sock, b"".join(out))
        finally:
            timer.close()

    return handle


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    if os.environ.get("PROBE_NO_QUEUE"):
        queue: Any = DictHandoff()
        note = "handoff=dict"
    else:
        queue = Queue(DictStorage(), BlackholeRelay())
        queue.start()
        note = "handoff=Queue(DictStorage, BlackholeRelay)"
    server = StreamServer(("127.0.0.1", port), make_handler(queue), backlog=4096)
    server.start()
    ready(note)
    server.serve_forever()


if __name__ == "__main__":
    main()
