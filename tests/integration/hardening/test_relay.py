"""Open-relay safety: RelayRestrictions against the classic relay-test tricks."""

from __future__ import annotations

import pytest

from slimta.edge.smtp import RelayRestrictions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


class Local(RelayRestrictions):
    local_domains = ("local.test", "b\u00fccher.test")


# (RCPT argument, expected code): every trick is refused for an
# unauthenticated client; plain local recipients are accepted.  501: the
# protocol core already refuses the syntax (no domain, trailing dot...).
CASES = [
    (b"<user@local.test>", 250),
    (b"<USER@LOCAL.TEST>", 250),
    (b"<postmaster>", 250),
    (b"<user@xn--bcher-kva.test>", 250),
    (b"<user@other.test>", 554),
    (b"<user%other.test@local.test>", 550),
    (b"<user%other.test>", 501),
    (b"<@local.test:user@other.test>", 554),
    (b"<@other.test:user@local.test>", 250),
    (b'<"user@other.test"@local.test>', 550),
    (b'<"user%other.test"@local.test>', 550),
    (b"<other.test!user@local.test>", 550),
    (b"<other.test!user>", 501),
    (b"<user@[192.0.2.1]>", 550),
    (b"<user@[127.0.0.1]>", 550),
    (b"<user@local.test.>", 501),
    (b"<user@other.test@local.test>", 501),
    (b"<user@local.test@other.test>", 501),
    (b"<user>", 501),
    (b"<user@local.test:25>", 501),
]
IDN_CASES = [
    ("<user@b\u00fccher.test>", 250),
    # A Cyrillic o (U+043E) in an otherwise Latin label: a look-alike of local.test.
    ("<user@l\u043ecal.test>", 550),
    # All-Cyrillic look-alike: not mixed, but not local either.
    ("<user@\u0441\u043e\u0441al.test>", 550),
    ("<user@\u0440\u0430\u0443\u0440\u0430l.test>", 550),
]


@pytest.mark.parametrize(("rcpt", "code"), CASES, ids=[c.decode() for c, _ in CASES])
def test_relay_trick(edge_factory, raw_client, rcpt, code):
    edge = edge_factory(validator_class=Local)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:" + rcpt + b"\r\n")
    got = client.codes(2)
    assert got[0] == 250
    assert got[1] == code
    assert edge.queue.envelopes == []


@pytest.mark.parametrize(("rcpt", "code"), IDN_CASES)
def test_idn_lookalikes(edge_factory, raw_client, rcpt, code):
    edge = edge_factory(validator_class=Local)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@sender.test> SMTPUTF8\r\nRCPT TO:" + rcpt.encode() + b"\r\n")
    got = client.codes(2)
    assert got[0] == 250
    if code == 550:
        assert got[1] in (550, 554)  # a trick (mixed scripts) or simply not local
    else:
        assert got[1] == code


def test_trusted_network_may_relay(edge_factory, raw_client):
    class Trusted(Local):
        trusted_networks = ("127.0.0.0/8",)

    edge = edge_factory(validator_class=Trusted)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<user@other.test>\r\nRCPT TO:<u%v@local.test>\r\n")
    assert client.codes(3) == [250, 250, 550]


def test_relay_restrictions_unit():
    class Session:
        address = ("192.0.2.1", 25)
        auth = None

    validators = Local(Session())  # type: ignore[arg-type]
    assert validators.relay_refusal("x@local.test") is None
    refusal = validators.relay_refusal("x@elsewhere.test")
    assert refusal is not None
    assert refusal.code == "554"
    assert "5.7.1" in (refusal.message or "")
    Session.auth = ("user", None)  # type: ignore[assignment]
    assert validators.relay_refusal("x@elsewhere.test") is None
    assert validators.relay_refusal("x%y@local.test") is not None
