"""SMTP validators: a DNS blocklist check and a list of local domains."""

from __future__ import annotations

from typing import Any, Protocol

from slimta.edge.smtp import SmtpValidators

__all__ = ["Blocklist", "MailhubValidators"]


class Blocklist(Protocol):
    """What the validators need from a DNSBL (``slimta.util.dnsbl.DnsBlocklist`` fits)."""

    def get(self, ip: str) -> bool:
        """True if ``ip`` is listed."""
        ...

    def get_reason(self, ip: str) -> str | None:
        """The listing's explanation (its TXT record), if any."""
        ...


class MailhubValidators(SmtpValidators):
    """Refuse listed clients at MAIL FROM, and recipients we do not host.

    Configure by subclassing (or setting the class attributes at start-up):
    the edge makes one validators object per connection.
    """

    #: The DNSBL to consult, or None for no check.
    blocklist: Blocklist | None = None
    #: The domains we accept mail for.
    local_domains: frozenset[str] = frozenset({"example.com"})

    def handle_mail(self, reply: Any, sender: str, params: dict[str, Any]) -> None:
        """Refuse the sender when the client's IP address is listed."""
        ip = self.session.address[0] if self.session.address else None
        if self.blocklist is None or ip is None or not self.blocklist.get(ip):
            return
        reason = self.blocklist.get_reason(ip) or "listed on a DNS blocklist"
        reply.code = "550"
        reply.message = f"5.7.1 Client {ip} refused: {reason}"

    def handle_rcpt(self, reply: Any, recipient: str, params: dict[str, Any]) -> None:
        """Refuse recipients outside :attr:`local_domains`."""
        domain = recipient.rpartition("@")[2].lower()
        if domain not in self.local_domains:
            reply.code = "550"
            reply.message = "5.7.1 Relaying denied"
