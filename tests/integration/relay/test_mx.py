"""MxSmtpRelay against a real DNS server and SMTP servers on 127.0.0.x."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.mx import MxSmtpRelay, NoDomainError
from slimta.smtp.reply import Reply

from .conftest import ScriptedServer, make_envelope, smtp_dialogue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

DEAD_IP = "127.0.0.9"  # nothing listens there: connection refused


@pytest.fixture
def mx_servers() -> Iterator[dict[str, ScriptedServer]]:
    """Scripted SMTP servers on 127.0.0.2 and 127.0.0.3, same port."""
    first = ScriptedServer(smtp_dialogue, host="127.0.0.2")
    port = first.address[1]
    second = ScriptedServer(smtp_dialogue, host="127.0.0.3", port=port)
    try:
        yield {"127.0.0.2": first, "127.0.0.3": second}
    finally:
        first.stop()
        second.stop()


@pytest.fixture
def mx_relay(mx_servers: dict[str, ScriptedServer], dns_resolver: Any) -> Iterator[MxSmtpRelay]:
    relay = MxSmtpRelay(command_timeout=2.0, connect_timeout=2.0)
    relay.smtp_port = mx_servers["127.0.0.2"].address[1]
    try:
        yield relay
    finally:
        relay.kill()


def test_most_preferred_mx_first(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("dst.test", "MX")] = [(20, "mx-b.dst.test"), (10, "mx-a.dst.test")]
    dns_server.zone[("mx-a.dst.test", "A")] = ["127.0.0.3"]
    dns_server.zone[("mx-b.dst.test", "A")] = ["127.0.0.2"]
    result = mx_relay.attempt(make_envelope(recipients=["x@dst.test"]), 0)
    assert result.code == "250"
    assert len(mx_servers["127.0.0.3"].messages) == 1
    assert mx_servers["127.0.0.2"].connections == 0


def test_failover_to_next_mx_in_same_attempt(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("dst.test", "MX")] = [(10, "dead.dst.test"), (20, "busy.dst.test"), (30, "ok.dst.test")]
    dns_server.zone[("dead.dst.test", "A")] = [DEAD_IP]
    dns_server.zone[("busy.dst.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("ok.dst.test", "A")] = ["127.0.0.3"]
    mx_servers["127.0.0.2"].script = lambda conn: smtp_dialogue(conn, banner=b"421 4.3.2 busy\r\n")
    assert mx_relay.attempt(make_envelope(recipients=["x@dst.test"]), 0).code == "250"
    assert mx_servers["127.0.0.2"].connections == 1
    assert len(mx_servers["127.0.0.3"].messages) == 1


def test_all_mx_down_is_transient(dns_server: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("dst.test", "MX")] = [(10, "dead.dst.test"), (20, "nameless.dst.test")]
    dns_server.zone[("dead.dst.test", "A")] = [DEAD_IP]
    with pytest.raises(TransientRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@dst.test"]), 0)
    assert info.value.reply.command == "[CONNECT]"


def test_message_refusal_does_not_fail_over(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("dst.test", "MX")] = [(10, "a.dst.test"), (20, "b.dst.test")]
    dns_server.zone[("a.dst.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("b.dst.test", "A")] = ["127.0.0.3"]
    mx_servers["127.0.0.2"].script = lambda conn: smtp_dialogue(conn, final=b"554 5.7.1 spam\r\n")
    with pytest.raises(PermanentRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@dst.test"]), 0)
    assert info.value.reply.code == "554"
    assert mx_servers["127.0.0.3"].connections == 0


def test_implicit_mx(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("plain.test", "A")] = ["127.0.0.2"]
    assert mx_relay.attempt(make_envelope(recipients=["x@plain.test"]), 0).code == "250"
    assert len(mx_servers["127.0.0.2"].messages) == 1


def test_null_mx_fails_without_connecting(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("nomail.test", "MX")] = [(0, ".")]
    dns_server.zone[("nomail.test", "A")] = ["127.0.0.2"]
    with pytest.raises(PermanentRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@nomail.test"]), 0)
    assert info.value.reply.code == "556"
    assert str(info.value.reply.message).startswith("5.1.10")
    assert mx_servers["127.0.0.2"].connections == 0


def test_servfail_is_transient(dns_server: Any, mx_relay: MxSmtpRelay) -> None:
    from tests.integration.dns.server import SERVFAIL

    dns_server.zone[("broken.test", "MX")] = SERVFAIL
    with pytest.raises(TransientRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@broken.test"]), 0)
    assert (info.value.reply.code, str(info.value.reply.message)[:5]) == ("451", "4.4.3")


def test_nxdomain_is_permanent(dns_server: Any, mx_relay: MxSmtpRelay) -> None:
    with pytest.raises(PermanentRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@nowhere.test"]), 0)
    assert (info.value.reply.code, str(info.value.reply.message)[:5]) == ("550", "5.1.2")


def test_dns_timeout_is_transient(dns_server: Any, mx_relay: MxSmtpRelay) -> None:
    from tests.integration.dns.server import DROP

    dns_server.zone["slow.test"] = DROP
    with pytest.raises(TransientRelayError) as info:
        mx_relay.attempt(make_envelope(recipients=["x@slow.test"]), 0)
    assert (info.value.reply.code, str(info.value.reply.message)[:5]) == ("451", "4.4.3")


def test_recipients_grouped_per_domain(dns_server: Any, mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    dns_server.zone[("one.test", "MX")] = [(10, "mx.one.test")]
    dns_server.zone[("mx.one.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("two.test", "MX")] = [(10, "mx.two.test")]
    dns_server.zone[("mx.two.test", "A")] = ["127.0.0.3"]
    rcpts = ["a@one.test", "b@TWO.test", "c@one.test", "d@missing.test", "nodomain"]
    result = mx_relay.attempt(make_envelope(recipients=rcpts), 0)
    assert list(result) == rcpts
    assert isinstance(result["a@one.test"], Reply)
    assert result["a@one.test"].code == "250"
    assert isinstance(result["b@TWO.test"], Reply)
    assert isinstance(result["d@missing.test"], PermanentRelayError)
    assert isinstance(result["nodomain"], NoDomainError)
    one = [line for line in mx_servers["127.0.0.2"].lines if line.startswith(b"RCPT")]
    two = [line for line in mx_servers["127.0.0.3"].lines if line.startswith(b"RCPT")]
    assert one == [b"RCPT TO:<a@one.test>", b"RCPT TO:<c@one.test>"]
    assert two == [b"RCPT TO:<b@TWO.test>"]


def test_force_mx(mx_servers: Any, mx_relay: MxSmtpRelay) -> None:
    mx_relay.force_mx("forced.test", "127.0.0.3", mx_servers["127.0.0.3"].address[1])
    assert mx_relay.attempt(make_envelope(recipients=["x@FORCED.test"]), 0).code == "250"
    assert len(mx_servers["127.0.0.3"].messages) == 1


def test_socket_creator_receives_resolved_addresses(
    dns_server: Any, mx_servers: Any, dns_resolver: Any
) -> None:
    from slimta.util import build_ipv4_socket_creator

    dialled: list[Any] = []
    ipv4 = build_ipv4_socket_creator()

    def creator(address: Any, *args: Any) -> Any:
        dialled.append(address)
        return ipv4(address, *args)

    dns_server.zone[("dst.test", "MX")] = [(10, "mx.dst.test")]
    dns_server.zone[("mx.dst.test", "A")] = ["127.0.0.2"]
    dns_server.zone[("mx.dst.test", "AAAA")] = ["::1"]
    relay = MxSmtpRelay(socket_creator=creator, command_timeout=2.0)
    relay.smtp_port = port = mx_servers["127.0.0.2"].address[1]
    try:
        assert relay.attempt(make_envelope(recipients=["x@dst.test"]), 0).code == "250"
    finally:
        relay.kill()
    assert dialled == [("127.0.0.2", port)]
