"""This repository's slimta: SmtpEdge -> Queue(DictStorage) -> BlackholeRelay.

Usage: ``.venv/bin/python bench/_servers/slimta_server.py PORT``.  Prints
``READY`` once listening.  If ``slimta.queue`` cannot be imported yet, a
minimal in-process queue (``enqueue`` stores into a dict) stands in for
Queue + DictStorage + BlackholeRelay, and the READY line says ``queue=fallback``.

With ``SLIMTA_BENCH_CPROFILE=FILE`` set, the process runs under cProfile and
writes its stats to FILE on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gevent
import gevent.event
from _common import parse_port, raise_fd_limit, ready

from slimta.edge.smtp import SmtpEdge


class FallbackQueue:
    """Stand-in for Queue(DictStorage, BlackholeRelay): store, then drop."""

    def __init__(self) -> None:
        self.store: dict[str, object] = {}
        self._ids = itertools.count()
        self._loop = gevent.get_hub().loop

    def enqueue(self, envelope: object) -> list[tuple[object, str]]:
        msg_id = f"{next(self._ids):x}"
        self.store[msg_id] = envelope
        # What a blackhole relay does once delivery runs: forget it.
        self._loop.run_callback(self.store.pop, msg_id, None)
        return [(envelope, msg_id)]


def build_queue() -> tuple[object, str]:
    try:
        from slimta.queue import Queue
        from slimta.queue.dict import DictStorage
        from slimta.relay.blackhole import BlackholeRelay
    except ImportError:
        return FallbackQueue(), "queue=fallback"
    queue = Queue(DictStorage(), BlackholeRelay())
    queue.start()
    return queue, "queue=slimta.queue"


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    profile_path = os.environ.get("SLIMTA_BENCH_CPROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    queue, note = build_queue()
    edge = SmtpEdge(("127.0.0.1", port), queue)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    ready(note)
    stop.wait()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    edge.kill()


if __name__ == "__main__":
    main()
