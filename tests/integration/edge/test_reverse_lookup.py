"""SmtpSession.reverse_lookup: the client's PTR name, through our resolver."""

from __future__ import annotations

import smtplib

import pytest

from slimta.edge.smtp import SmtpSession
from tests.integration.dns.server import SERVFAIL, dns_resolver, dns_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MESSAGE = b"Subject: ptr\r\n\r\nbody\r\n"


class LookingUp(SmtpSession):
    reverse_lookup = True


def _send(edge) -> None:
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        client.noop()  # the lookup answers while the session goes on
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)


def test_reverse_address_recorded(edge_factory, dns_server, dns_resolver):  # noqa: F811
    dns_server.zone[("1.0.0.127.in-addr.arpa", "PTR")] = ["client.example.test"]
    edge = edge_factory(session_class=LookingUp)
    _send(edge)
    (env,) = edge.queue.envelopes
    assert env.client["host"] == "client.example.test"
    assert ("1.0.0.127.in-addr.arpa", "PTR") in [(name, kind) for name, kind, _ in dns_server.queries]


def test_failed_lookup_leaves_host_empty(edge_factory, dns_server, dns_resolver):  # noqa: F811
    dns_server.zone[("1.0.0.127.in-addr.arpa", "PTR")] = SERVFAIL
    edge = edge_factory(session_class=LookingUp)
    _send(edge)
    (env,) = edge.queue.envelopes
    assert env.client["host"] is None


def test_off_by_default(edge_factory, dns_server, dns_resolver):  # noqa: F811
    dns_server.zone[("1.0.0.127.in-addr.arpa", "PTR")] = ["client.example.test"]
    edge = edge_factory()
    _send(edge)
    (env,) = edge.queue.envelopes
    assert env.client["host"] is None
    assert not dns_server.queries
