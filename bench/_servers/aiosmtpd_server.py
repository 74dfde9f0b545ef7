"""aiosmtpd 1.4.6: Controller + SMTP with a handler that stores into a dict.

Usage: ``bench/peers/aiosmtpd/bin/python bench/_servers/aiosmtpd_server.py PORT``.
Prints ``READY`` once listening.  The handler stores each message in a dict
and drops it on the next loop iteration, as the slimta pipelines' blackhole
relay does, so memory stays flat over a long run.
"""

from __future__ import annotations

import itertools
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import parse_port, raise_fd_limit, ready
from aiosmtpd.controller import Controller


class DictHandler:
    def __init__(self) -> None:
        self.store: dict[int, tuple[str, list[str], bytes]] = {}
        self._ids = itertools.count()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        import asyncio

        msg_id = next(self._ids)
        self.store[msg_id] = (envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        asyncio.get_running_loop().call_soon(self.store.pop, msg_id, None)
        return "250 2.0.0 Ok: queued"


def main() -> None:
    port = parse_port(__doc__ or "")
    raise_fd_limit()
    controller = Controller(DictHandler(), hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready()
    while not stop.wait(1.0):
        pass
    controller.stop()


if __name__ == "__main__":
    main()
