"""Tutorial: a submission server for your users, relaying by MX.

Mail clients (Thunderbird, phones, scripts) submit mail on port 587 with
STARTTLS and on port 465 with implicit TLS, always with a user name and
password.  The server refuses to take passwords before TLS, refuses mail
from clients that did not log in, and lets each user send only as
themselves.  Accepted mail goes to a disk queue and from there to each
recipient domain's mail exchangers, found in DNS::

    python3 examples/tutorials/submission.py --cert cert.pem --key key.pem \
        --users users.txt --spool ./spool

``users.txt`` has one ``address:secret`` line per user; the secret is best
a passlib hash: ``slimta passwd --file users.txt alice@example.com``
adds one.  ``--force-mx
example.net=10.0.0.5:25`` sends a domain's mail to a fixed host instead of
asking DNS (internal domains; the tutorial's test uses it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
from typing import Any, ClassVar

import gevent
import gevent.event

from slimta.diskstorage import DiskStorage
from slimta.edge.smtp import SmtpEdge, SmtpValidators
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.queue import Queue
from slimta.relay.smtp.mx import MxSmtpRelay


class SubmissionValidators(SmtpValidators):
    """Logged-in users only, each sending as themselves."""

    #: address -> secret (plain, or a passlib hash); filled from ``--users``.
    users: ClassVar[dict[str, str]] = {}

    def handle_auth(self, reply: Any, creds: Any) -> None:
        """Check the password; without this hook every login fails."""
        stored = self.users.get(creds.authcid)
        if stored is None or not creds.check_secret(stored):
            reply.code, reply.message = "535", "5.7.8 Authentication credentials invalid"

    def handle_mail(self, reply: Any, sender: str, params: Any) -> None:
        """Refuse anonymous clients and forged senders."""
        if self.session.auth is None:
            reply.code, reply.message = "530", "5.7.0 Authentication required"
        elif sender.lower() != self.session.auth[0].lower():
            reply.code, reply.message = "553", "5.7.1 Sender address not owned by you"


def read_users(path: str) -> dict[str, str]:
    """Read ``address:secret`` lines; blank lines and ``#`` comments are skipped."""
    users = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip() and not line.startswith("#"):
                name, _, secret = line.rstrip("\n").partition(":")
                users[name] = secret
    return users


def main() -> None:
    """Parse the options, start both listeners and the queue, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="A submission server relaying by MX.")
    parser.add_argument("--starttls", default="0.0.0.0:587", help="address:port for STARTTLS")
    parser.add_argument("--implicit-tls", default="0.0.0.0:465", help="address:port for implicit TLS")
    parser.add_argument("--cert", required=True, help="certificate chain (PEM)")
    parser.add_argument("--key", required=True, help="private key (PEM)")
    parser.add_argument("--users", required=True, help="file of address:secret lines")
    parser.add_argument("--hostname", default=None, help="our name in the banner and headers")
    parser.add_argument("--spool", default="/var/spool/slimta-submission", help="disk queue")
    parser.add_argument("--force-mx", action="append", default=[], metavar="DOMAIN=HOST:PORT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    SubmissionValidators.users = read_users(args.users)

    # One TLS context, loaded before serving, for both listeners.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)

    relay = MxSmtpRelay()
    for route in args.force_mx:
        domain, _, target = route.partition("=")
        host, _, port = target.rpartition(":")
        relay.force_mx(domain, host, int(port))
    queue = Queue(DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta"), relay)
    for policy in (AddDateHeader(), AddMessageIdHeader(), AddReceivedHeader()):
        queue.add_policy(policy)  # clients often leave Date and Message-Id out
    queue.start()

    edges = []
    for listen, implicit in ((args.starttls, False), (args.implicit_tls, True)):
        host, _, port = listen.rpartition(":")
        edge = SmtpEdge(
            (host, int(port)),
            queue,
            validator_class=SubmissionValidators,
            auth=True,
            context=context,
            tls_immediately=implicit,
            hostname=args.hostname,
        )
        edge.start()
        edges.append(edge)

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    for edge in edges:
        edge.kill()
    queue.kill()


if __name__ == "__main__":
    main()
