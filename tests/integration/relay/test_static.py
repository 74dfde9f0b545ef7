"""StaticSmtpRelay against real peers: our SmtpEdge and aiosmtpd."""

from __future__ import annotations

from typing import Any

import gevent
import pytest

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp import SmtpPermanentRelayError, SmtpTransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.smtp.reply import Reply

from .conftest import make_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


def test_delivers_to_smtpedge(edge: Any) -> None:
    relay = StaticSmtpRelay("127.0.0.1", edge.port, ehlo_as="relay.test")
    try:
        result = relay.attempt(make_envelope(recipients=["a@dst.test", "b@dst.test"]), 0)
    finally:
        relay.kill()
    assert isinstance(result, Reply)
    assert result.code == "250"
    (env,) = edge.queue.envelopes
    assert env.sender == "sender@src.test"
    assert env.recipients == ["a@dst.test", "b@dst.test"]
    assert env.message == b"hello\r\n"
    assert env.client["name"] == "relay.test"


def test_reuses_connection_with_idle_timeout(edge: Any) -> None:
    relay = StaticSmtpRelay("127.0.0.1", edge.port, pool_size=2, idle_timeout=2.0)
    try:
        for n in range(5):
            relay.attempt(make_envelope(body=f"msg {n}\r\n".encode()), 0)
    finally:
        relay.kill()
    assert len(edge.queue.envelopes) == 5
    # One session: a single banner/EHLO, five MAIL commands.
    assert edge.hooks().count("banner") == 1
    assert edge.hooks().count("mail") == 5


def test_concurrent_deliveries_bounded_by_pool(edge: Any) -> None:
    relay = StaticSmtpRelay("127.0.0.1", edge.port, pool_size=3, idle_timeout=2.0)
    try:
        jobs = [gevent.spawn(relay.attempt, make_envelope(body=f"m{n}\r\n".encode()), 0) for n in range(20)]
        gevent.joinall(jobs, timeout=8, raise_error=True)
        assert len(relay.pool) <= 3
    finally:
        relay.kill()
    assert sorted(e.message for e in edge.queue.envelopes) == sorted(f"m{n}\r\n".encode() for n in range(20))
    assert edge.hooks().count("banner") <= 3


def test_partial_acceptance_gives_per_recipient_results(edge_factory: Any) -> None:
    def rcpt(_validators: Any, reply: Reply, address: str, _params: Any) -> None:
        if address.startswith("bad"):
            reply.code, reply.message = "550", "5.1.1 No such user"
        elif address.startswith("later"):
            reply.code, reply.message = "451", "4.2.0 Try later"

    edge = edge_factory(overrides={"rcpt": rcpt})
    relay = StaticSmtpRelay("127.0.0.1", edge.port)
    try:
        result = relay.attempt(make_envelope(recipients=["ok@d.test", "bad@d.test", "later@d.test"]), 0)
    finally:
        relay.kill()
    assert set(result) == {"ok@d.test", "bad@d.test", "later@d.test"}
    assert result["ok@d.test"].code == "250"
    assert isinstance(result["bad@d.test"], SmtpPermanentRelayError)
    assert result["bad@d.test"].reply.command == "RCPT"
    assert isinstance(result["later@d.test"], SmtpTransientRelayError)
    assert edge.queue.envelopes[0].recipients == ["ok@d.test"]


def test_single_rejected_recipient_raises(edge_factory: Any) -> None:
    def rcpt(_validators: Any, reply: Reply, address: str, _params: Any) -> None:
        reply.code, reply.message = "550", "5.1.1 No such user"

    edge = edge_factory(overrides={"rcpt": rcpt})
    relay = StaticSmtpRelay("127.0.0.1", edge.port)
    try:
        with pytest.raises(PermanentRelayError) as info:
            relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()
    assert info.value.reply.code == "550"
    assert info.value.reply.command == "RCPT"
    assert edge.queue.envelopes == []


def test_sender_refused(edge_factory: Any) -> None:
    def mail(_validators: Any, reply: Reply, address: str, _params: Any) -> None:
        reply.code, reply.message = "451", "4.7.1 Slow down"

    edge = edge_factory(overrides={"mail": mail})
    relay = StaticSmtpRelay("127.0.0.1", edge.port, idle_timeout=1.0)
    try:
        with pytest.raises(TransientRelayError) as info:
            relay.attempt(make_envelope(), 0)
        assert info.value.reply.command == "MAIL"
        assert info.value.reply.address == ("127.0.0.1", edge.port)
    finally:
        relay.kill()


def test_aiosmtpd_peer(aiosmtpd_server: Any) -> None:
    relay = StaticSmtpRelay(*aiosmtpd_server.address, idle_timeout=1.0)
    try:
        for n in range(3):
            relay.attempt(make_envelope(recipients=[f"r{n}@dst.test"], body=b".dot start\r\nline\r\n"), 0)
    finally:
        relay.kill()
    messages = aiosmtpd_server.wait_for(3)
    assert len(messages) == 3
    first = messages[0]
    assert first.startswith(b"sender@src.test|r0@dst.test\n")
    # Dot-stuffing undone by the server: the line starts with one dot.
    assert b"\r\n.dot start\r\n" in first
