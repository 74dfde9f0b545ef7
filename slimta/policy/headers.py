"""Queue policies that add the standard header fields a relay is expected to.

* :class:`AddDateHeader` -- ``Date`` (RFC 5322 section 3.6.1), when missing.
* :class:`AddMessageIdHeader` -- ``Message-Id`` (section 3.6.4), when missing.
* :class:`AddReceivedHeader` -- a ``Received`` trace field (RFC 5321
  section 4.4) at the top of the header section, always.

The trace field is built from what the edge recorded in
``envelope.client`` and ``envelope.receiver``, much of which the client
chose itself (the ``EHLO`` name) or controls (its reverse DNS).  Each such
value is checked against the grammar it must follow and replaced when it
does not, so no client can make the field lie about its structure or carry
a control character.
"""

from __future__ import annotations

import ipaddress
import re
import socket as _stdlib_socket
import time
import uuid
from email.message import Message
from email.policy import compat32
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from gevent import socket as gsocket

from slimta import __version__
from slimta.policy import QueuePolicy

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["AddDateHeader", "AddMessageIdHeader", "AddReceivedHeader"]

# A domain name: dot-separated labels of letters, digits and inner hyphens
# (underscores are tolerated, as real EHLO names often have them).
_DOMAIN = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?\Z"
)
_LITERAL = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]\Z")
_PROTOCOL = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}\Z")
# Inside a comment: printable ASCII without parentheses and backslash.
_UNSAFE_COMMENT = re.compile(r"[^\x21-\x27\x2a-\x5b\x5d-\x7e]")


def _headers(envelope: Envelope) -> Message:
    if envelope.headers is None:
        envelope.headers = Message(policy=compat32)
    return envelope.headers


def _timestamp(envelope: Envelope) -> float:
    return envelope.timestamp if envelope.timestamp is not None else time.time()


def _valid_domain(name: object) -> str | None:
    """Return ``name`` if it is a syntactically valid domain name or literal."""
    if not isinstance(name, str):
        return None
    if _DOMAIN.match(name):
        return name
    match = _LITERAL.match(name)
    if match:
        try:
            ipaddress.ip_address(match.group(1))
        except ValueError:
            return None
        return name
    return None


def _ip_literal(ip: object) -> str | None:
    """Return an IP address as an RFC 5321 address literal, or ``None``."""
    try:
        addr = ipaddress.ip_address(str(ip))
    except ValueError:
        return None
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        return f"[{mapped}]" if mapped else f"[IPv6:{addr}]"
    return f"[{addr}]"


class AddDateHeader(QueuePolicy):
    """Add a ``Date`` field when the message has none.

    The date is when the message was received (``envelope.timestamp``).
    """

    def __init__(self) -> None:
        pass

    def build_date(self, timestamp: float) -> str:
        """Format the date for the header; override to change the format.

        Args:
            timestamp: Seconds since the epoch.

        Returns:
            An RFC 5322 date-time in local time with a numeric zone, e.g.
            ``'Tue, 14 Nov 2023 23:13:20 +0100'``.
        """
        return formatdate(timestamp, localtime=True)

    def apply(self, envelope: Envelope) -> None:
        """Add ``Date`` unless the header section already has one.

        Args:
            envelope: The envelope to change.
        """
        headers = _headers(envelope)
        if "date" not in headers:
            headers["Date"] = self.build_date(_timestamp(envelope))


class AddMessageIdHeader(QueuePolicy):
    """Add a ``Message-Id`` field when the message has none.

    Args:
        hostname: The domain part of generated identifiers; by default the
            host's fully qualified name (looked up cooperatively, through
            gevent, once when the policy is created).
    """

    def __init__(self, hostname: str | None = None) -> None:
        self.hostname = hostname or gsocket.getfqdn()

    def apply(self, envelope: Envelope) -> None:
        """Add ``Message-Id`` unless the header section already has one.

        Args:
            envelope: The envelope to change.
        """
        headers = _headers(envelope)
        if "message-id" not in headers:
            stamp = int(_timestamp(envelope))
            headers["Message-Id"] = f"<{uuid.uuid4().hex}.{stamp}@{self.hostname}>"


class AddReceivedHeader(QueuePolicy):
    """Prepend a ``Received`` trace field, as every relay must (RFC 5321 4.4).

    The field looks like::

        Received: from mail.example.com (mail.example.com [192.0.2.1])
            by mx.example.net (slimta 1.0) with ESMTPSA id 3f2a...;
            Tue, 14 Nov 2023 22:13:20 +0000

    * ``from``: the ``EHLO`` name when it is a valid domain or address
      literal, else ``unknown`` with the (sanitised) name given as
      ``helo=...`` in the comment; the comment holds the client's reverse
      DNS name (``unknown`` if missing or malformed) and IP address.
    * ``with``: ``envelope.client['protocol']`` (``SMTP``, ``ESMTP``,
      ``ESMTPS`` for TLS, ``ESMTPA`` for AUTH, ``ESMTPSA`` for both, per
      RFC 3848; ``LMTP`` likewise).  When ``envelope.client['auth']`` is set
      but the protocol name does not say so, the ``A`` is added.
    * ``id``: a new unique identifier (see :meth:`build_id`).
    * ``for``: the recipient, only when there is exactly one -- listing
      several would show every recipient the others' addresses, including
      ``Bcc`` ones.

    Args:
        date_format: :func:`time.strftime` format of the date, applied to
            the UTC time the message was received.
    """

    def __init__(self, date_format: str = "%a, %d %b %Y %H:%M:%S +0000") -> None:
        self.date_format = date_format

    def build_id(self, envelope: Envelope) -> str:
        """Return the value of the ``id`` clause; override to use your own.

        Args:
            envelope: The envelope being stamped.

        Returns:
            An atom identifying this hop's copy of the message.
        """
        return uuid.uuid4().hex

    @staticmethod
    def _from_section(client: dict[str, Any]) -> str:
        ehlo = client.get("name")
        from_domain = _valid_domain(ehlo)
        host = _valid_domain(client.get("host")) or "unknown"
        ip = _ip_literal(client.get("ip")) or "[unknown]"
        comment = f"{host} {ip}"
        if from_domain is None:
            from_domain = "unknown"
            if ehlo:
                helo = _UNSAFE_COMMENT.sub("?", str(ehlo))[:64]
                comment += f" helo={helo}"
        return f"from {from_domain} ({comment})"

    @staticmethod
    def _protocol(client: dict[str, Any]) -> str | None:
        protocol = client.get("protocol")
        if not isinstance(protocol, str) or not _PROTOCOL.match(protocol):
            return None
        upper = protocol.upper()
        if client.get("auth") and upper in ("ESMTP", "ESMTPS", "LMTP", "LMTPS"):
            upper += "A"
        return upper

    def apply(self, envelope: Envelope) -> None:
        """Prepend the ``Received`` field to the envelope's headers.

        Args:
            envelope: The envelope to change.
        """
        client = envelope.client or {}
        by = _valid_domain(envelope.receiver) or _valid_domain(_stdlib_socket.gethostname()) or "localhost"
        parts = [self._from_section(client), f"by {by} (slimta {__version__})"]
        protocol = self._protocol(client)
        if protocol:
            parts.append(f"with {protocol}")
        parts.append(f"id {self.build_id(envelope)}")
        if len(envelope.recipients) == 1 and not re.search(r"[\x00-\x20\x7f<>]", envelope.recipients[0]):
            parts.append(f"for <{envelope.recipients[0]}>")
        date = time.strftime(self.date_format, time.gmtime(_timestamp(envelope)))
        _headers(envelope)
        envelope.prepend_header("Received", " ".join(parts) + "; " + date)
