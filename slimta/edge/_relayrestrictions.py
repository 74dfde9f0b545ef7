"""Open-relay safety for the SMTP edge: :class:`RelayRestrictions`.

A validators base class that refuses relaying for unauthenticated,
untrusted clients and refuses the address forms used to trick MTAs into
relaying, plus the domain helpers it needs (IDNA canonical form,
mixed-script detection).  It is policy, not session machinery, so it lives
apart from :mod:`slimta.edge.smtp`, which re-exports it: import it as
``slimta.edge.smtp.RelayRestrictions``.
"""

from __future__ import annotations

import functools
import ipaddress
import unicodedata
from typing import Any, ClassVar

from slimta.smtp.reply import Reply

from ._smtpsession import SmtpValidators

__all__ = ["RelayRestrictions"]


class RelayRestrictions(SmtpValidators):
    """Refuse relaying: unauthenticated clients may only send to local domains.

    Use it as a base (or mixin, first) of your validators and list the
    domains this MTA receives mail for::

        class MyValidators(RelayRestrictions):
            local_domains = ("example.com", "example.net")

    Recipients of other domains are refused ``554 5.7.1 Relay access
    denied`` unless the client authenticated or connects from
    :attr:`trusted_networks`.  Whoever the client, the address forms used to
    trick MTAs into relaying are refused ``550 5.7.1``: the percent hack
    (``user%other@local``), bang paths (``host!user@local``), quoted local
    parts hiding an ``@``, domain literals (``user@[192.0.2.1]``), trailing
    dots and domains mixing scripts (IDN look-alikes).  A source route
    (``<@a:b@c>``) is dropped by the protocol core (RFC 5321 4.1.1.3), so the
    real destination ``b@c`` is the one checked.

    .. versionadded:: 0.1.0
    """

    #: Domains delivered here (compared case-insensitively, IDNA-aware).
    local_domains: ClassVar[tuple[str, ...]] = ()
    #: Networks (CIDR) whose clients may relay without authenticating.
    trusted_networks: ClassVar[tuple[str, ...]] = ()

    def handle_rcpt(self, reply: Any, recipient: str, params: dict[str, Any]) -> None:
        """Refuse relaying and relay tricks, then run the next ``handle_rcpt``."""
        refusal = self.relay_refusal(recipient)
        if refusal is not None:
            reply.copy(refusal)
            return
        parent = getattr(super(), "handle_rcpt", None)
        if parent is not None:
            parent(reply, recipient, params)

    def relay_refusal(self, recipient: str) -> Reply | None:
        """The reply refusing ``recipient``, or None to accept it."""
        local, at, domain = recipient.rpartition("@")
        if not at:
            # RFC 5321 4.5.1: "postmaster" with no domain is always local.
            if recipient.lower() == "postmaster":
                return None
            return Reply("550", "5.1.3 Recipient address lacks a domain")
        trick = _relay_trick(local, domain)
        if trick is not None:
            return Reply("550", f"5.7.1 Address form not accepted ({trick})")
        if _canonical_domain(domain) in self._local_set():
            return None
        if self.session.auth is not None or self._trusted():
            return None
        return Reply("554", "5.7.1 Relay access denied")

    def _local_set(self) -> frozenset[str]:
        return _local_domains(tuple(type(self).local_domains))

    def _trusted(self) -> bool:
        address = self.session.address
        host = address[0] if isinstance(address, tuple) and address else None
        if not isinstance(host, str) or not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.trusted_networks)


def _relay_trick(local: str, domain: str) -> str | None:
    if local.startswith('"') or "@" in local:
        return "quoted local part"
    if "%" in local:
        return "percent hack"
    if "!" in local:
        return "bang path"
    if ":" in local or ":" in domain:
        return "source route"
    if domain.startswith("["):
        return "domain literal"
    if domain.endswith(".") or ".." in domain or not domain:
        return "malformed domain"
    if not domain.isascii() and _mixed_scripts(domain):
        return "mixed scripts in domain"
    return None


def _mixed_scripts(domain: str) -> bool:
    """True if a label mixes letters of several scripts (IDN look-alikes)."""
    for label in domain.split("."):
        scripts = {unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0] for ch in label if ch.isalpha()}
        if len(scripts) > 1:
            return True
    return False


def _canonical_domain(domain: str) -> str:
    domain = unicodedata.normalize("NFC", domain).lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


@functools.lru_cache(maxsize=64)
def _local_domains(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_canonical_domain(d) for d in domains)
