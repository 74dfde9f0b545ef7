"""Tutorial: an inbound MX that delivers into Maildirs.

Mail for your domains arrives over SMTP, is stored in a crash-safe disk
queue (the client hears ``250`` only once the message is on disk), and is
then written into one Maildir per recipient.  Mail for any other domain is
refused, so this server is not an open relay::

    python3 examples/tutorials/inbound_mx.py --listen 127.0.0.1:2525 \
        --domain example.com --spool ./spool --maildir ./mail

``alice@example.com`` then finds her mail in ``./mail/alice/new/``.
"""

from __future__ import annotations

import argparse
import logging
import signal

import gevent
import gevent.event

from slimta.diskstorage import DiskStorage
from slimta.edge.smtp import RelayRestrictions, SmtpEdge
from slimta.policy.headers import AddReceivedHeader
from slimta.queue import Queue
from slimta.relay.maildir import MaildirRelay


class InboundValidators(RelayRestrictions):
    """Accept recipients of our own domains only (set from ``--domain``)."""


def main() -> None:
    """Parse the options, wire edge -> queue -> relay, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="An inbound MX delivering into Maildirs.")
    parser.add_argument("--listen", default="0.0.0.0:25", help="address:port to listen on")
    parser.add_argument("--domain", action="append", required=True, help="a domain we receive mail for")
    parser.add_argument("--hostname", default=None, help="our name in the banner and Received headers")
    parser.add_argument("--spool", default="/var/spool/slimta", help="directory of the disk queue")
    parser.add_argument("--maildir", default="/var/mail/slimta", help="one Maildir per user in here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    host, _, port = args.listen.rpartition(":")
    InboundValidators.local_domains = tuple(args.domain)

    # The three parts: a durable queue, its relay, and the SMTP edge in front.
    storage = DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta")
    queue = Queue(storage, MaildirRelay(args.maildir))
    queue.add_policy(AddReceivedHeader())
    queue.start()
    edge = SmtpEdge((host, int(port)), queue, validator_class=InboundValidators, hostname=args.hostname)
    edge.start()

    # Serve until asked to stop; what was accepted is on disk either way.
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()


if __name__ == "__main__":
    main()
