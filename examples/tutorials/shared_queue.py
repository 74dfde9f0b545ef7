"""Tutorial: several nodes sharing one queue in Redis.

Run this script on two (or more) machines behind the same MX records or
load balancer, all pointing at one Redis server.  Each node accepts mail
over SMTP and stores it in Redis before answering ``250``; any node may
then deliver it.  Every envelope is *claimed* by one node at a time with a
lease, so it is attempted once, and if a node dies, the envelopes it held
are picked up by another one when the lease ends::

    python3 examples/tutorials/shared_queue.py --listen 0.0.0.0:25 \
        --redis redis://queue.internal:6379/0 --domain example.com \
        --maildir /srv/mail          # a file system both nodes mount

Redis keeps the queue: run it with ``appendonly yes`` and ``appendfsync
always`` so an acknowledged message survives a power cut.
"""

from __future__ import annotations

import argparse
import logging
import signal

import gevent
import gevent.event

from slimta.edge.smtp import RelayRestrictions, SmtpEdge
from slimta.policy.headers import AddReceivedHeader
from slimta.queue import Queue
from slimta.redisstorage import RedisStorage
from slimta.relay.maildir import MaildirRelay


class InboundValidators(RelayRestrictions):
    """Accept recipients of our own domains only (set from ``--domain``)."""


def main() -> None:
    """Parse the options, wire edge -> Redis queue -> Maildir, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="One node of a cluster sharing a Redis queue.")
    parser.add_argument("--listen", default="0.0.0.0:25", help="address:port to listen on")
    parser.add_argument("--redis", default="redis://localhost:6379/0", help="URL of the shared Redis")
    parser.add_argument("--prefix", default="slimta:", help="key prefix: the name of the shared queue")
    parser.add_argument("--domain", action="append", required=True, help="a domain we receive mail for")
    parser.add_argument("--hostname", default=None, help="this node's name")
    parser.add_argument("--maildir", default="/srv/mail", help="one Maildir per user in here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    InboundValidators.local_domains = tuple(args.domain)

    storage = RedisStorage(url=args.redis, prefix=args.prefix)
    queue = Queue(storage, MaildirRelay(args.maildir))
    queue.add_policy(AddReceivedHeader())
    queue.start()
    host, _, port = args.listen.rpartition(":")
    edge = SmtpEdge((host, int(port)), queue, validator_class=InboundValidators, hostname=args.hostname)
    edge.start()

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()
    storage.close()


if __name__ == "__main__":
    main()
