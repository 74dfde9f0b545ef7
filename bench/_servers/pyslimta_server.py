"""python-slimta 5.0.5: SmtpEdge -> Queue(DictStorage) -> BlackholeRelay.

Usage: ``bench/peers/python-slimta/bin/python bench/_servers/pyslimta_server.py PORT``
(run it from outside the repository so that our ``slimta/`` is not imported).
Prints ``READY`` once listening.  Uses python-slimta's defaults (listen backlog
included), as a user script would.
"""

from __future__ import annotations

import signal
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))
# Make sure the peer's slimta is imported, never this repository's.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != here.parents[1]]

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from _common import parse_port, raise_fd_limit, ready  # noqa: E402

from slimta.edge.smtp import SmtpEdge  # noqa: E402
from slimta.queue import Queue  # noqa: E402
from slimta.queue.dict import DictStorage  # noqa: E402
from slimta.relay.blackhole import BlackholeRelay  # noqa: E402


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    queue = Queue(DictStorage(), BlackholeRelay())
    queue.start()
    edge = SmtpEdge(("127.0.0.1", port), queue)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    ready()
    stop.wait()
    edge.kill()


if __name__ == "__main__":
    main()
