"""A complete, small mail server: SMTP in, a queue, and delivery into a folder.

Run it with ``python3 dev.py run`` (or ``.venv/bin/python examples/smtp_server.py``)
and send it mail::

    swaks --server 127.0.0.1:1025 --to you@example.com --from me@example.com

Each delivered message is written to ``./mail/<id>.eml``.  Options::

    --host 127.0.0.1 --port 1025 --maildir ./mail --max-size 10240000
"""

from __future__ import annotations

import argparse
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import gevent
from gevent.threadpool import ThreadPool

from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import Relay


class FolderRelay(Relay):
    """Deliver each envelope as an ``.eml`` file in a folder (the "next hop")."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        # File writes run in a thread so they never block the gevent hub.
        self.pool = ThreadPool(2)

    def attempt(self, envelope: Any, attempts: int) -> None:
        """Write the message to a new file in the folder."""
        header, body = envelope.flatten()
        path = self.folder / f"{uuid.uuid4().hex}.eml"
        self.pool.apply(self._write, (path, header + body))
        logging.info("delivered %s -> %s as %s", envelope.sender, envelope.recipients, path.name)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


class Validators(SmtpValidators):
    """Log every session start; accept all senders and recipients."""

    def handle_banner(self, reply: Any, address: Any) -> None:
        """Log the client's address."""
        logging.info("connection from %s", address)


def main() -> None:
    """Start the edge and the queue, and serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--maildir", type=Path, default=Path("mail"))
    parser.add_argument("--max-size", type=int, default=10240000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    queue = Queue(DictStorage(), FolderRelay(args.maildir))
    queue.add_policy(AddDateHeader())
    queue.add_policy(AddMessageIdHeader())
    queue.add_policy(AddReceivedHeader())
    queue.start()
    edge = SmtpEdge((args.host, args.port), queue, max_size=args.max_size, validator_class=Validators)
    edge.start()
    logging.info("listening on %s:%d, delivering into %s/", args.host, args.port, args.maildir)
    try:
        gevent.joinall([edge, queue], raise_error=True)
    except KeyboardInterrupt:
        logging.info("stopping")
        edge.kill()
        queue.kill()


if __name__ == "__main__":
    main()
