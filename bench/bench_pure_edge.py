"""Pure-Python cost of SmtpEdge per message: a scripted fake socket, no system calls.

A profiling aid, not a comparison: it drives ``SmtpEdge.handle`` (with
``Queue(DictStorage(), BlackholeRelay())`` behind it) over an object that
answers ``recv`` from a script of client lines and swallows ``send``, so the
CPU time measured is slimta's Python work alone: no kernel, no event loop
waits, no load generator.  Use it to see what a change to the hot path saves
before running the socket benchmarks (bench_smtp.py, bench_floor.py)::

    .venv/bin/python bench/bench_pure_edge.py time 100   # 100 messages per connection
    .venv/bin/python bench/bench_pure_edge.py time 1     # one message per connection
    .venv/bin/python bench/bench_pure_edge.py prof 1     # cProfile, by own time
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent

from slimta.edge.smtp import SmtpEdge
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay.blackhole import BlackholeRelay

BODY = b"From: a@b\r\nTo: c@d\r\nSubject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 14 + b".\r\n"


class FakeSock:
    """Enough of a socket for SmtpEdge: scripted reads, discarded writes."""

    def __init__(self, chunks):
        self.chunks = list(reversed(chunks))
        self.out = 0
        self._timeout = None

    def recv(self, n, flags=0):
        if flags:
            return b""
        return self.chunks.pop() if self.chunks else b""

    def send(self, data):
        self.out += len(data)
        return len(data)

    def sendall(self, data):
        self.out += len(data)

    def fileno(self):
        return 99

    def gettimeout(self):
        return self._timeout

    def settimeout(self, t):
        self._timeout = t

    def close(self):
        pass

    def pending(self):
        return 0

    def setsockopt(self, *a):
        pass


def script(msgs):
    """What smtp-source sends: EHLO, then MAIL/RCPT/DATA/message per message, QUIT."""
    c = [b"EHLO client.example\r\n"]
    for _ in range(msgs):
        c += [b"MAIL FROM:<sender@bench.example>\r\n", b"RCPT TO:<rcpt@bench.example>\r\n", b"DATA\r\n", BODY]
    c.append(b"QUIT\r\n")
    return c


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    per_conn = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    conns = max(1, 20000 // per_conn)
    queue = Queue(DictStorage(), BlackholeRelay())
    queue.start()
    edge = SmtpEdge(("127.0.0.1", 0), queue, hostname="bench.test")

    def run() -> None:
        for i in range(conns):
            edge.handle(FakeSock(script(per_conn)), ("127.0.0.1", 40000 + i))
            gevent.sleep(0)  # let the queue's delivery greenlets run

    run()  # warm up
    if mode == "prof":
        profile = cProfile.Profile()
        profile.enable()
        run()
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(35)
        return
    per_message = []
    for _ in range(5):
        started = time.process_time()
        run()
        per_message.append((time.process_time() - started) / (conns * per_conn) * 1e6)
    per_message.sort()
    print(
        f"{per_conn} msg/conn: us of CPU per message: min {per_message[0]:.1f}, median {per_message[2]:.1f}"
    )


if __name__ == "__main__":
    main()
