"""Delivery status notifications ("bounces") sent back to a message's sender.

:class:`Bounce` is an :class:`~slimta.envelope.Envelope` addressed to the
original sender, from the null sender, whose content is an RFC 3464
delivery status notification (DSN)::

    multipart/report; report-type=delivery-status
      text/plain                 what happened, for people
      message/delivery-status    the same, for programs (RFC 3464 fields)
      message/rfc822             the original message, or
      text/rfc822-headers        only its header section

By default a bounce reports a failure (``Action: failed``).  Pass
``action="delayed"`` for a "still trying" notice or ``action="delivered"``
for a success notice, as a sender asks for with ``NOTIFY=DELAY`` or
``NOTIFY=SUCCESS`` (see :mod:`slimta.bounce.dsn`, which also tells the queue
*whether* to send a notice).

Safety
------

* Every address, host name and reply text written into the notice has its
  control characters (CR, LF, NUL, ...) replaced, so a sender address like
  ``'a@b\\r\\nBcc: victim@c'`` cannot add a header field or MIME part.
* The original message is attached in full only up to
  :attr:`Bounce.size_limit` bytes (50,000 by default, like Postfix's
  ``bounce_size_limit``); a larger one is returned as headers only.
* A bounce always has the null sender, and :func:`slimta.bounce.dsn.should_bounce`
  never allows a notice about a message from the null sender, so notices
  never loop.

Customising
-----------

As in python-slimta 4.0, the text comes from the class attributes
:attr:`Bounce.header_template` and :attr:`Bounce.footer_template`
(:class:`~slimta.util.bytesformat.BytesFormat` objects, or ``str``/``bytes``
templates that are converted on use), filled in with these keys: the 4.0 keys
``boundary``, ``sender``, ``recipients`` (joined with
:attr:`Bounce.recipient_join`), ``client_name``, ``client_ip``,
``protocol``, ``code``, ``message``, ``delivery_info`` (the body of the
``message/delivery-status`` part) and ``content_type`` (of the attached
original), plus ``subject``, ``summary``, ``note``, ``date``,
``message_id``, ``reporting_mta``, ``action``, ``status`` and
``transfer_encoding``.  Every value is already sanitised.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
import uuid
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any, ClassVar

from slimta.bounce.dsn import ACTIONS, DsnError, get_dsn, get_recipient_dsn, return_headers_only
from slimta.envelope import Envelope
from slimta.smtp.reply import Reply
from slimta.util.bytesformat import BytesFormat

__all__ = ["Bounce"]


def _crlf_template(text: str) -> BytesFormat:
    """Build a template from text written with plain newlines."""
    data = re.sub(r"\r?\n", "\r\n", text).encode("ascii")
    return BytesFormat(data, mode="remove")


_DEFAULT_HEADER = _crlf_template(
    """\
From: MAILER-DAEMON@{reporting_mta}
To: {sender}
Subject: {subject}
Date: {date}
Message-Id: {message_id}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: {transfer_encoding}

This is a delivery status notification (RFC 3464) in MIME format.

--{boundary}
Content-Type: text/plain; charset=utf-8
Content-Description: Notification

{summary}

- {recipients}

Reply from the last mail server involved:
{code} {message}
{note}
--{boundary}
Content-Type: message/delivery-status
Content-Description: Delivery report

{delivery_info}

--{boundary}
Content-Type: {content_type}
Content-Description: {content_description}

"""
)

_DEFAULT_FOOTER = _crlf_template(
    """\

--{boundary}--
"""
)

# Per action: the Subject and the opening sentence of the text part.
_WORDING = {
    "failed": (
        "Delivery Status Notification (Failure)",
        "Your message could not be delivered to these recipients; it will not be retried:",
    ),
    "delayed": (
        "Delivery Status Notification (Delay)",
        "Your message has not been delivered yet to these recipients. Delivery will be "
        "retried; there is nothing you need to do now:",
    ),
    "delivered": (
        "Delivery Status Notification (Success)",
        "Your message was delivered to these recipients:",
    ),
    "relayed": (
        "Delivery Status Notification (Relayed)",
        "Your message was passed on to a mail server that will not send delivery "
        "notifications, for these recipients:",
    ),
    "expanded": (
        "Delivery Status Notification (Expanded)",
        "Your message was delivered and forwarded to further addresses, for these recipients:",
    ),
}
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0"}

# C0 controls and DEL; a sanitised value never holds one.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters that stay as they are in an RFC 6533 utf-8-addr-xtext.
_QCHAR = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x5b\x5d-\x7e]")
_TEXT_LIMIT = 900  # keeps every generated line well under RFC 5322's 998


def _clean(value: object, limit: int = _TEXT_LIMIT) -> str:
    """Return ``value`` as one line of text: control characters become spaces."""
    if value is None:
        return "unknown"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = _CONTROL.sub(" ", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _address_field(address: str) -> str:
    """Format an address for ``Final-Recipient``/``Original-Recipient``.

    Plain printable ASCII addresses use the ``rfc822`` type.  Anything else
    (non-ASCII, spaces, controls) uses the ``utf-8`` type of RFC 6533 with
    every other character written as ``\\x{HEX}``, so nothing can break
    the field.
    """
    if address and all(0x21 <= ord(ch) <= 0x7E for ch in address):
        return f"rfc822; {address}"
    encoded = "".join(ch if _QCHAR.match(ch) else f"\\x{{{ord(ch):X}}}" for ch in address)
    return f"utf-8; {encoded}"


def _mta_name(host: object) -> str:
    """Format a host name or IP address for a ``*-MTA`` field."""
    text = _clean(host, 255).strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return text.replace(" ", "") or "unknown"
    return f"[IPv6:{addr}]" if addr.version == 6 else f"[{addr}]"


def _template(value: Any) -> BytesFormat:
    """Accept a template as BytesFormat, bytes or str (4.0 allowed all three)."""
    if isinstance(value, BytesFormat):
        return value
    if isinstance(value, str):
        value = value.encode("utf-8")
    return BytesFormat(re.sub(rb"\r?\n", b"\r\n", bytes(value)), mode="remove")


class Bounce(Envelope):
    """A delivery status notification about ``envelope``, to its sender.

    The new envelope has :attr:`sender` as its sender (the null sender) and
    the original sender as its only recipient (with any control character
    replaced by a space).  Each recipient of
    ``envelope`` gets its own per-recipient block in the report, all with
    the same action and reply; to report different replies, build one
    bounce per reply from ``envelope.copy(rcpts)``.

    DSN data stored on the original with :mod:`slimta.bounce.dsn` is used:
    ``RET=HDRS`` attaches headers only, ``ENVID`` and ``ORCPT`` are reported
    as ``Original-Envelope-Id`` and ``Original-Recipient``.

    Args:
        envelope: The original message.
        reply: The reply that decided the outcome (e.g. the ``550`` from the
            next hop); ``reply.address`` names the remote MTA when known.
        headers_only: Attach only the original's header section.
        action: ``"failed"`` (default), ``"delayed"``, ``"delivered"``,
            ``"relayed"`` or ``"expanded"`` -- the RFC 3464 ``Action``.
            ``None`` uses the class attribute :attr:`action`.

    Raises:
        DsnError: ``action`` is not one of those values.

    Attributes:
        headers_only: Whether only the original's headers were attached
            (asked for, ``RET=HDRS``, or the original exceeded
            :attr:`size_limit`).
    """

    #: Envelope sender of every notice: the null sender, per RFC 5321 and 3464.
    sender = ""

    #: Template of everything before the attached original (see module doc).
    header_template: ClassVar[BytesFormat | bytes | str] = _DEFAULT_HEADER

    #: Template of everything after the attached original.
    footer_template: ClassVar[BytesFormat | bytes | str] = _DEFAULT_FOOTER

    #: Separator put between recipients for the ``{recipients}`` key.
    recipient_join: ClassVar[str] = "\r\n- "

    #: The :attr:`~slimta.envelope.Envelope.client` information given to
    #: every notice (a copy is made for each).
    client: dict[str, Any] = {
        "name": "postmaster",
        "ip": "127.0.0.1",
        "host": "localhost",
    }

    #: Host name used as the notices' ``receiver`` and ``Reporting-MTA``;
    #: ``None`` takes the original envelope's receiver (or, lacking that,
    #: this machine's host name).
    receiver: str | None = None

    #: The default ``Action`` of notices built by this class.
    action: ClassVar[str] = "failed"

    #: Largest original (headers plus body, in bytes) attached in full;
    #: ``None`` for no limit.  Above it only the headers are attached, and
    #: the header section itself is cut at a field boundary if it alone is
    #: larger.
    size_limit: ClassVar[int | None] = 50000

    def __init__(
        self, envelope: Envelope, reply: Reply, headers_only: bool = False, action: str | None = None
    ) -> None:
        cls = type(self)
        act = cls.action if action is None else action
        if act not in ACTIONS:
            raise DsnError(f"unknown DSN action {act!r}; expected one of {', '.join(ACTIONS)}")
        # A control character in the address could only serve to inject SMTP
        # commands at the next hop; the address is undeliverable either way.
        super().__init__(sender=cls.sender, recipients=[_CONTROL.sub(" ", envelope.sender or "")])
        self.headers_only = bool(headers_only)
        self._build_message(envelope, reply, act)
        self.timestamp = time.time()
        self.client = {"protocol": None, "auth": None}
        self.client.update(cls.client)
        self.receiver = cls.receiver or envelope.receiver

    # -- pieces ------------------------------------------------------------

    def _reporting_mta(self, envelope: Envelope) -> str:
        name = type(self).receiver or envelope.receiver or socket.gethostname()
        return _mta_name(name)

    @staticmethod
    def _status(reply: Reply, action: str) -> str:
        esc = reply.enhanced_status_code if reply else None
        return esc or _DEFAULT_STATUS.get(action, "2.0.0")

    @staticmethod
    def _reply_text(reply: Reply) -> str:
        """The reply message as one line (a multi-line reply is joined)."""
        message = reply.message if reply else None
        return _clean(" ".join((message or "").splitlines()))

    def _get_delivery_info(self, envelope: Envelope, reply: Reply, action: str, reporting_mta: str) -> str:
        """Build the body of the ``message/delivery-status`` part."""
        dsn = get_dsn(envelope)
        fields = [f"Reporting-MTA: dns; {reporting_mta}"]
        if dsn is not None and dsn.envid:
            fields.append(f"Original-Envelope-Id: {_clean(dsn.envid, 100).replace(' ', '')}")
        client = envelope.client or {}
        if client.get("name") or client.get("ip"):
            name = _mta_name(client.get("name") or client.get("ip"))
            ip = _clean(client.get("ip"), 64).replace("(", "").replace(")", "")
            fields.append(f"Received-From-MTA: dns; {name} ({ip})")
        arrival = envelope.timestamp if envelope.timestamp is not None else time.time()
        fields.append(f"Arrival-Date: {formatdate(arrival, localtime=True)}")
        blocks = ["\r\n".join(fields)]

        status = self._status(reply, action)
        remote = None
        if reply and reply.address:
            address = reply.address
            host = address if isinstance(address, str | bytes) else address[0]
            remote = _mta_name(host)
        text = self._reply_text(reply)
        now = formatdate(localtime=True)
        for rcpt in envelope.recipients:
            lines = []
            rdsn = get_recipient_dsn(envelope, rcpt)
            if rdsn is not None and rdsn.orcpt is not None:
                addr_type = _clean(rdsn.orcpt[0], 40).replace(" ", "")
                lines.append(f"Original-Recipient: {addr_type}; {_clean(rdsn.orcpt[1], 500)}")
            lines.append(f"Final-Recipient: {_address_field(rcpt)}")
            lines.append(f"Action: {action}")
            lines.append(f"Status: {status}")
            if remote:
                lines.append(f"Remote-MTA: dns; {remote}")
            if reply and reply.code:
                lines.append(f"Diagnostic-Code: smtp; {reply.code} {text}".rstrip())
            lines.append(f"Last-Attempt-Date: {now}")
            blocks.append("\r\n".join(lines))
        return "\r\n\r\n".join(blocks)

    def _original(self, envelope: Envelope) -> tuple[bytes, bytes]:
        """Return the original's (headers, body) as they will be attached."""
        header_data, body_data = envelope.flatten()
        if self.headers_only:
            body_data = b""
        limit = type(self).size_limit
        if limit is not None and len(header_data) + len(body_data) > limit:
            self.headers_only = True
            body_data = b""
            if len(header_data) > limit:
                # Cut after the last whole field that fits: a field starts
                # after a CRLF that is not followed by folding whitespace.
                cut = max(
                    (m.start() + 2 for m in re.finditer(rb"\r\n(?![ \t])", header_data[:limit])),
                    default=0,
                )
                header_data = header_data[:cut] + b"\r\n"
        return header_data, body_data

    def _get_substitution_table(
        self, envelope: Envelope, reply: Reply, action: str, original: tuple[bytes, bytes]
    ) -> dict[str, Any]:
        """Return the template keys (module doc), every value sanitised."""
        reporting_mta = self._reporting_mta(envelope)
        subject, summary = _WORDING[action]
        rcpts = [_clean(rcpt, 500) for rcpt in envelope.recipients]
        client = envelope.client or {}
        note = ""
        if self.headers_only:
            note = "\r\nOnly the header section of your message is attached.\r\n"
        eight_bit = any(not part.isascii() for part in original) or not all(
            value.isascii() for value in [*rcpts, _clean(envelope.sender)]
        )
        return {
            "boundary": f"slimta-dsn-{uuid.uuid4().hex}",
            "sender": _clean(envelope.sender, 500),
            "recipients": self.recipient_join.join(rcpts),
            "delivery_info": self._get_delivery_info(envelope, reply, action, reporting_mta),
            "client_name": _clean(client.get("name")),
            "client_ip": _clean(client.get("ip")),
            "protocol": _clean(client.get("protocol")),
            "code": (reply.code if reply else None) or "",
            "message": self._reply_text(reply),
            "content_type": "text/rfc822-headers" if self.headers_only else "message/rfc822",
            "content_description": "Header section of the original message"
            if self.headers_only
            else "The original message",
            "subject": subject,
            "summary": summary,
            "note": note,
            "date": formatdate(localtime=True),
            "message_id": f"<{uuid.uuid4().hex}@{reporting_mta.strip('[]').replace(':', '.')}>",
            "reporting_mta": reporting_mta,
            "action": action,
            "status": self._status(reply, action),
            "transfer_encoding": "8bit" if eight_bit else "7bit",
        }

    def _build_message(self, envelope: Envelope, reply: Reply, action: str) -> None:
        if return_headers_only(envelope):
            self.headers_only = True
        original = self._original(envelope)
        table = self._get_substitution_table(envelope, reply, action, original)
        cls = type(self)
        parts: Sequence[bytes] = (
            _template(cls.header_template).format(**table),
            original[0],
            original[1],
            _template(cls.footer_template).format(**table),
        )
        self.parse(b"".join(parts))
