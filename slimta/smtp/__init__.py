"""The SMTP protocol: errors shared by the server and the client.

The protocol itself lives in :mod:`slimta.smtp.protocol` (sans-IO: bytes in,
events and bytes out); :mod:`slimta.smtp.server` and
:mod:`slimta.smtp.client` drive it over gevent sockets through
:mod:`slimta.smtp.io`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimta.core import SlimtaError

if TYPE_CHECKING:
    from slimta.smtp.reply import Reply

__all__ = ["BadReply", "ConnectionLost", "MessageTooBig", "SmtpError"]


class SmtpError(SlimtaError):
    """Base class of the errors raised by the SMTP protocol code."""


class ConnectionLost(SmtpError):
    """The peer closed the connection, or it broke, in the middle of a session."""

    def __init__(self, msg: str = "Connection lost") -> None:
        super().__init__(msg)


class MessageTooBig(SmtpError):
    """A message's data went past the size limit of the session."""

    def __init__(self, msg: str = "Message exceeded maximum size") -> None:
        super().__init__(msg)


class BadReply(SmtpError):
    """The peer sent something that is not a well-formed SMTP reply.

    Attributes:
        data: the offending bytes (cut to a few hundred octets), if known.
    """

    def __init__(self, data: bytes | None = None, reply: Reply | None = None) -> None:
        shown = data[:200] if data is not None else None
        super().__init__(f"Invalid SMTP reply: {shown!r}")
        self.data = shown
        self.reply = reply
