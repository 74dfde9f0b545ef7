"""A child process holding one SmtpEdge for the 10,000-connection tests.

``python -m tests.integration.hardening._edge_child [--limits-off|--limits-counted]`` prints
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
    if "--limits-off" in sys.argv:
        limits = ClientLimits.off()
    elif "--limits-counted" in sys.argv:
        # Every limit on and counting loopback clients too (nothing exempt),
        # set high enough never to refuse the benchmark's load.
        limits = ClientLimits(
            max_connections=30000,
            max_connections_per_ip=30000,
            max_connections_per_network=30000,
            connections_per_minute=10**9,
            messages_per_minute=10**9,
            recipients_per_minute=10**9,
            exempt=(),
        )
    else:
        limits = ClientLimits(max_connections=30000)
    edge = SmtpEdge(("127.0.0.1", 0), _Queue(), hostname="mx.test", limits=limits)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    print(f"READY {edge.server.address[1]} ", flush=True)
    stop.wait()
    edge.kill()


if __name__ == "__main__":
    main()
