"""Tutorial: send all outgoing mail through a smarthost, with credentials.

Hosts on your network (web applications, cron, monitoring) hand their mail
to this server without logging in; it queues the mail on disk and passes all
of it to one upstream server -- your provider's or your company's relay --
over TLS, logging in there with an account of its own::

    export SMARTHOST_USER=relay@example.com SMARTHOST_PASSWORD=...
    python3 examples/tutorials/smarthost.py --listen 10.0.0.2:25 \
        --trusted 10.0.0.0/24 --smarthost smtp.example.net:587

The password comes from the environment, so it does not show in ``ps``
(under systemd, use ``EnvironmentFile=`` or ``LoadCredential=``).  TLS to the
smarthost is mandatory and its certificate is verified against the system's
CAs, or ``--ca-file``: a password is never sent where it could be read.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl

import gevent
import gevent.event

from slimta.diskstorage import DiskStorage
from slimta.edge.smtp import RelayRestrictions, SmtpEdge
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.queue import Queue
from slimta.relay.smtp.static import StaticSmtpRelay


class TrustedClients(RelayRestrictions):
    """Relay for clients of the trusted networks (``--trusted``), no one else."""


def main() -> None:
    """Parse the options, wire edge -> queue -> smarthost, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="Relay all mail through a smarthost.")
    parser.add_argument("--listen", default="127.0.0.1:25", help="address:port to listen on")
    parser.add_argument("--trusted", action="append", help="a network (CIDR) allowed to send (127.0.0.0/8)")
    parser.add_argument("--smarthost", required=True, help="host:port of the upstream server")
    parser.add_argument("--ca-file", default=None, help="CA certificates to verify it with (PEM)")
    parser.add_argument("--hostname", default=None, help="our name in the banner and headers")
    parser.add_argument("--spool", default="/var/spool/slimta-smarthost", help="disk queue")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    TrustedClients.trusted_networks = tuple(args.trusted or ["127.0.0.0/8"])
    credentials = (os.environ["SMARTHOST_USER"], os.environ["SMARTHOST_PASSWORD"])

    # A verifying context: the relay then insists on STARTTLS and a valid certificate.
    context = ssl.create_default_context(cafile=args.ca_file)
    host, _, port = args.smarthost.rpartition(":")
    relay = StaticSmtpRelay(host, int(port), context=context, tls_required=True, credentials=credentials)
    queue = Queue(DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta"), relay)
    for policy in (AddDateHeader(), AddMessageIdHeader(), AddReceivedHeader()):
        queue.add_policy(policy)
    queue.start()

    host, _, port = args.listen.rpartition(":")
    edge = SmtpEdge((host, int(port)), queue, validator_class=TrustedClients, hostname=args.hostname)
    edge.start()

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()


if __name__ == "__main__":
    main()
