"""The floor of any gevent SMTP client: canned commands to Postfix's smtp-sink.

Run::

    .venv/bin/python bench/bench_client_floor.py [--messages 20000] [--rounds 5]

A yardstick for issue 5's CPU target, like ``bench_floor.py`` for issue 3.
Ten persistent connections (the relay benchmark's pool size) to
``smtp-sink`` (pinned to CPU 1; this process to CPU 0) each send, per 1 KiB
message, the pipelined group ``MAIL``/``RCPT``/``DATA`` in one write, read
the three replies, write the message and the final dot in one write and read
the last reply: the least socket work an SMTP client with PIPELINING does.
Nothing is parsed beyond counting reply lines.  Reported: this process's
CPU (user + system) per message, median over rounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

import gevent
from gevent import socket as gsocket

SMTP_SINK = "/usr/sbin/smtp-sink"
TASKSET = shutil.which("taskset")
COMMANDS = b"MAIL FROM:<sender@bench.example>\r\nRCPT TO:<rcpt@bench.example>\r\nDATA\r\n"
MESSAGE = b"Subject: floor\r\n\r\n" + (b"x" * 70 + b"\r\n") * 14 + b".\r\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sink() -> tuple[int, subprocess.Popen[bytes]]:
    """Start Postfix's smtp-sink on a free port, pinned to CPU 1 (this process to CPU 0).

    Returns the port and the process once it accepts connections.
    """
    if not os.access(SMTP_SINK, os.X_OK):
        sys.exit(f"{SMTP_SINK} missing: apt-get install postfix")
    port = free_port()
    cmd = [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"]
    if TASKSET and (os.cpu_count() or 1) > 1:
        cmd = [TASKSET, "-c", "1", *cmd]
        os.sched_setaffinity(0, {0})
    sink = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, sink
        except OSError:
            if time.monotonic() > deadline:
                sink.kill()
                raise
            time.sleep(0.05)


def read_replies(sock: gsocket.socket, buf: bytes, count: int) -> bytes:
    """Read until ``count`` final reply lines ("NNN ") are in; return the rest."""
    while True:
        done = 0
        start = 0
        while done < count:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            if buf[start + 3 : start + 4] == b" ":
                done += 1
            start = end + 2
        if done >= count:
            return buf[start:]
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("sink closed")
        buf += chunk


def session(port: int, messages: int) -> None:
    sock = gsocket.create_connection(("127.0.0.1", port))
    buf = read_replies(sock, b"", 1)
    sock.sendall(b"EHLO floor.test\r\n")
    buf = read_replies(sock, buf, 1)
    for _ in range(messages):
        sock.send(COMMANDS)
        buf = read_replies(sock, buf, 3)
        sock.send(MESSAGE)
        buf = read_replies(sock, buf, 1)
    sock.sendall(b"QUIT\r\n")
    sock.close()


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    port, sink = start_sink()
    try:
        per = args.messages // args.connections
        results = []
        for _ in range(args.rounds):
            before, started = cpu(), time.perf_counter()
            with gevent.Timeout(120):
                gevent.joinall(
                    [gevent.spawn(session, port, per) for _ in range(args.connections)], raise_error=True
                )
            wall = time.perf_counter() - started
            results.append(((cpu() - before) / (per * args.connections) * 1e6, per * args.connections / wall))
        print(
            f"client floor, {args.connections} connections, 1 KiB: "
            f"{statistics.median(r[0] for r in results):.1f} us CPU per message, "
            f"{statistics.median(r[1] for r in results):,.0f} msg/s (median of {args.rounds})"
        )
    finally:
        sink.terminate()
        sink.wait(5)


if __name__ == "__main__":
    main()
