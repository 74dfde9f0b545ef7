"""Tutorial: an HTTP-to-SMTP gateway.

Applications that cannot (or should not) speak SMTP post each message over
HTTP; the gateway stores it in a disk queue before answering ``204``, then
delivers it by MX like any mail server.  A request is one ``POST`` of the
raw message (``Content-Type: message/rfc822``) with the envelope in headers,
each address base64-encoded::

    curl -X POST http://127.0.0.1:8025/ \
        -H "Authorization: Bearer $GATEWAY_TOKEN" \
        -H "Content-Type: message/rfc822" \
        -H "X-Envelope-Sender: $(printf app@example.com | base64)" \
        -H "X-Envelope-Recipient: $(printf bob@example.net | base64)" \
        --data-binary @message.eml

Every request must carry the shared token from the ``GATEWAY_TOKEN``
environment variable.  Put the gateway behind a TLS-terminating proxy, or
pass an ``ssl.SSLContext`` as ``context=`` to serve HTTPS itself.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
from typing import ClassVar

import gevent
import gevent.event

from slimta.diskstorage import DiskStorage
from slimta.edge.wsgi import WsgiEdge, WsgiResponse, WsgiValidators
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
from slimta.queue import Queue
from slimta.relay.smtp.mx import MxSmtpRelay


class TokenValidators(WsgiValidators):
    """Accept only requests with ``Authorization: Bearer <GATEWAY_TOKEN>``."""

    custom_headers = ("Authorization",)
    token: ClassVar[str] = ""

    def validate_custom(self, name: str, value: str | None) -> None:
        """Compare the token in constant time; refuse with 401 otherwise."""
        expected = f"Bearer {self.token}".encode()
        if not hmac.compare_digest((value or "").encode(), expected):
            raise WsgiResponse("401 Unauthorized", [("WWW-Authenticate", "Bearer")])


def main() -> None:
    """Parse the options, wire WsgiEdge -> queue -> MX relay, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="Accept mail over HTTP, deliver it by SMTP.")
    parser.add_argument("--listen", default="127.0.0.1:8025", help="address:port for HTTP")
    parser.add_argument("--hostname", default=None, help="our name in Received headers")
    parser.add_argument("--spool", default="/var/spool/slimta-gateway", help="disk queue")
    parser.add_argument("--force-mx", action="append", default=[], metavar="DOMAIN=HOST:PORT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    TokenValidators.token = os.environ["GATEWAY_TOKEN"]

    relay = MxSmtpRelay()
    for route in args.force_mx:
        domain, _, target = route.partition("=")
        host, _, port = target.rpartition(":")
        relay.force_mx(domain, host, int(port))
    queue = Queue(DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta"), relay)
    for policy in (AddDateHeader(), AddMessageIdHeader(), AddReceivedHeader()):
        queue.add_policy(policy)
    queue.start()

    host, _, port = args.listen.rpartition(":")
    edge = WsgiEdge(
        queue, hostname=args.hostname, validator_class=TokenValidators, listener=(host, int(port))
    )
    edge.start()

    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()


if __name__ == "__main__":
    main()
