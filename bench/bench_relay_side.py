"""The relay side alone: Queue(DictStorage) -> StaticSmtpRelay -> smtp-sink, CPU per message.

Run::

    .venv/bin/python bench/bench_relay_side.py          # 5 batches of 5,000 x 1 KiB, median
    .venv/bin/python bench/bench_relay_side.py prof     # one batch under cProfile

A profiling aid for issue 5's CPU budget: no SMTP edge, envelopes are handed
to ``Queue.enqueue`` directly, and the relay (pool of 10, idle_timeout 10 s,
as in ``bench_relay.py``) delivers them to Postfix's ``smtp-sink`` pinned to
CPU 1 (this process on CPU 0).  Compare with ``bench_client_floor.py``, the
same socket work with canned commands and nothing else.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent

from slimta.envelope import Envelope
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay.smtp.static import StaticSmtpRelay

SMTP_SINK = "/usr/sbin/smtp-sink"
TASKSET = shutil.which("taskset")
MESSAGE = b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 14


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    if not os.access(SMTP_SINK, os.X_OK):
        sys.exit(f"{SMTP_SINK} missing: apt-get install postfix")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [SMTP_SINK, "-u", "nobody", f"127.0.0.1:{port}", "1024"]
    if TASKSET and (os.cpu_count() or 1) > 1:
        cmd = [TASKSET, "-c", "1", *cmd]
        os.sched_setaffinity(0, {0})
    sink = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        store = DictStorage()
        relay = StaticSmtpRelay("127.0.0.1", port, pool_size=10, idle_timeout=10.0, ehlo_as="bench.test")
        queue = Queue(store, relay)
        queue.start()

        def batch(count: int) -> None:
            for i in range(count):
                envelope = Envelope("sender@bench.example", ["rcpt@bench.example"])
                envelope.parse(MESSAGE)
                queue.enqueue(envelope)
                if i % 50 == 0:
                    gevent.sleep(0)  # let deliveries run, as an edge's clients would
            with gevent.Timeout(60):
                while store.env_db:
                    gevent.sleep(0.001)

        batch(500)  # warm up: the pool's connections
        if mode == "prof":
            profile = cProfile.Profile()
            profile.enable()
            batch(5000)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return
        per_message = []
        for _ in range(5):
            before = cpu()
            batch(5000)
            per_message.append((cpu() - before) / 5000 * 1e6)
        print(f"relay side, 1 KiB: {statistics.median(per_message):.1f} us CPU per message (median of 5)")
        relay.kill()
    finally:
        sink.terminate()
        sink.wait(5)


if __name__ == "__main__":
    main()
