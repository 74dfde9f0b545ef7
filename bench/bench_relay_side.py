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
import pstats
import resource
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent
from bench_client_floor import start_sink

from slimta.envelope import Envelope
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay.smtp.static import StaticSmtpRelay

MESSAGE = b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 14


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "time"
    port, sink = start_sink()
    try:
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
