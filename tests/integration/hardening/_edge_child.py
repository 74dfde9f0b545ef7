"""A child process holding one SmtpEdge for the 10,000-connection tests.

``python -m tests.integration.hardening._edge_child [--limits-off]`` prints
``READY <port> <pid>`` once listening and serves until SIGTERM.
"""

from __future__ import annotations

import resource
import signal
import sys

import gevent
import gevent.event

from slimta.edge.limits import ClientLimits
from slimta.edge.smtp import SmtpEdge


class _Queue:
    def __init__(self) -> None:
        self.count = 0

    def enqueue(self, envelope: object) -> list[tuple[object, str]]:
        self.count += 1
        return [(envelope, str(self.count))]


def main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limits = ClientLimits.off() if "--limits-off" in sys.argv else ClientLimits(max_connections=30000)
    edge = SmtpEdge(("127.0.0.1", 0), _Queue(), hostname="mx.test", limits=limits)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {edge.server.address[1]} ", flush=True)
    stop.wait()
    edge.kill()


if __name__ == "__main__":
    main()
