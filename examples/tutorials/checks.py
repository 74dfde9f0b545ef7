"""Tutorial: your own checks -- DNSBL, SPF, a mailbox table and a queue policy.

An inbound MX that is choosier than ``inbound_mx.py``:

* clients listed on a DNS block list are turned away at the banner;
* senders whose domain's SPF policy says this client may not send for it
  are refused at ``MAIL FROM``;
* recipients are checked against a table of mailboxes (a JSON file here; a
  database or Redis with the other :mod:`slimta.lookup` drivers), and the
  same table holds aliases, which a :class:`~slimta.lookup.policy.LookupPolicy`
  applies before the message is queued;
* a policy of our own, :class:`ArchiveCopy`, sends a copy of every message
  to an archive mailbox.

::

    echo '{"alice@example.com": {}, "sales@example.com": {"alias": "bob@example.com"},
           "bob@example.com": {}}' > mailboxes.json
    python3 examples/tutorials/checks.py --listen 0.0.0.0:25 --mailboxes mailboxes.json \
        --dnsbl zen.spamhaus.org --archive archive@example.com

``--nameserver 127.0.0.1:5353`` makes every DNS lookup (block lists, SPF)
go to that server instead of the system's resolvers; the tutorial's test
points it at a small DNS server of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from typing import Any

import gevent
import gevent.event

from slimta.diskstorage import DiskStorage
from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.envelope import Envelope
from slimta.lookup.drivers.dict import DictLookup
from slimta.lookup.policy import LookupPolicy
from slimta.policy import QueuePolicy
from slimta.policy.headers import AddReceivedHeader
from slimta.queue import Queue
from slimta.relay.maildir import MaildirRelay
from slimta.util.dns import DNSResolver
from slimta.util.dnsbl import DnsBlocklistGroup, check_dnsbl
from slimta.util.spf import EnforceSpf

# Built before the validators class, filled in from the command line.
BLOCKLISTS = DnsBlocklistGroup()
SPF = EnforceSpf(timeout=10.0)
SPF.set_enforcement("fail", match_code="550", match_message="5.7.23 SPF check failed: {reason}")
SPF.set_enforcement("temperror", match_code="451", match_message="4.7.24 SPF check failed temporarily")
MAILBOXES: dict[str, Any] = {}


class CheckingValidators(SmtpValidators):
    """DNSBL at the banner, SPF at MAIL FROM, the mailbox table at RCPT TO."""

    mailboxes = DictLookup(MAILBOXES, "{address}")

    @check_dnsbl(BLOCKLISTS, match_code="554", match_message="5.7.1 Client listed on a DNS block list")
    def handle_banner(self, reply: Any, address: Any) -> None:
        """Runs only for clients the block lists do not list."""

    @SPF.check
    def handle_mail(self, reply: Any, sender: str, params: Any) -> None:
        """Runs after the SPF check (which may already have refused the sender)."""

    def handle_rcpt(self, reply: Any, recipient: str, params: Any) -> None:
        """Accept addresses that have a record in the mailbox table."""
        if self.mailboxes.lookup_address(recipient.lower()) is None:
            reply.code, reply.message = "550", "5.1.1 No such mailbox"


class ArchiveCopy(QueuePolicy):
    """Add an archive recipient to every envelope, before it is stored."""

    def __init__(self, archive: str) -> None:
        self.archive = archive

    def apply(self, envelope: Envelope) -> None:
        """Add the archive address (once) to the recipients."""
        if self.archive not in envelope.recipients:
            envelope.recipients.append(self.archive)


def main() -> None:
    """Parse the options, wire the checks, the queue and the relay, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="An inbound MX with DNSBL, SPF and mailbox checks.")
    parser.add_argument("--listen", default="0.0.0.0:25", help="address:port to listen on")
    parser.add_argument("--mailboxes", required=True, help="JSON object: address -> record")
    parser.add_argument("--dnsbl", action="append", default=[], help="a DNS block list zone")
    parser.add_argument("--archive", default=None, help="address that gets a copy of every message")
    parser.add_argument("--nameserver", action="append", default=None, help="ip:port of a DNS server")
    parser.add_argument("--hostname", default=None, help="our name in the banner and headers")
    parser.add_argument("--spool", default="/var/spool/slimta", help="directory of the disk queue")
    parser.add_argument("--maildir", default="/var/mail/slimta", help="one Maildir per user in here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.nameserver:
        DNSResolver.configure(servers=args.nameserver, timeout=2.0)
    for zone in args.dnsbl:
        BLOCKLISTS.add_dnsbl(zone)
    with open(args.mailboxes, encoding="utf-8") as table:
        MAILBOXES.update((address.lower(), record) for address, record in json.load(table).items())

    queue = Queue(DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta"), MaildirRelay(args.maildir))
    queue.add_policy(AddReceivedHeader())
    queue.add_policy(LookupPolicy(CheckingValidators.mailboxes))  # aliases from the same table
    if args.archive:
        queue.add_policy(ArchiveCopy(args.archive))
    queue.start()
    host, _, port = args.listen.rpartition(":")
    edge = SmtpEdge((host, int(port)), queue, validator_class=CheckingValidators, hostname=args.hostname)
    edge.start()

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()


if __name__ == "__main__":
    main()
