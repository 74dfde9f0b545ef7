"""The validators, tested through a real SMTP conversation (no network)."""

from __future__ import annotations

from mailhub.validators import MailhubValidators


class FakeBlocklist:
    """A stand-in DNSBL: the listed addresses and their reasons."""

    def __init__(self, listed: dict[str, str]) -> None:
        self.listed = listed

    def get(self, ip: str) -> bool:
        """True if listed."""
        return ip in self.listed

    def get_reason(self, ip: str) -> str | None:
        """The reason given for the listing."""
        return self.listed.get(ip)


class Validators(MailhubValidators):
    """The validators under test, with the fake DNSBL plugged in."""

    blocklist = FakeBlocklist({"203.0.113.66": "Listed by test.dnsbl"})


def test_a_listed_client_is_refused(smtp_conversation):
    """A client on the blocklist is refused at MAIL FROM, with the reason."""
    conv = smtp_conversation(Validators, client_address=("203.0.113.66", 4321))
    conv.ehlo()
    reply = conv.mail("spammer@example.net")
    assert reply.code == "550"
    assert reply.message == "5.7.1 Client 203.0.113.66 refused: Listed by test.dnsbl"


def test_a_clean_client_may_send_to_local_domains_only(smtp_conversation):
    """Other clients may send, but only to our domains."""
    conv = smtp_conversation(Validators, client_address=("198.51.100.7", 4321))
    conv.ehlo()
    assert conv.mail("friend@example.net").code == "250"
    assert conv.rcpt("ann@example.com").code == "250"
    assert conv.rcpt("someone@elsewhere.test").code == "550"
    assert conv.data(b"Subject: hello\r\n\r\nHi Ann\r\n").code == "250"
    [envelope] = conv.envelopes
    assert envelope.recipients == ["ann@example.com"]
    assert envelope.client["ip"] == "198.51.100.7"
