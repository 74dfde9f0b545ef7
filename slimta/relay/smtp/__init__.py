"""Delivery over SMTP and LMTP: the relay errors shared by the SMTP relays.

The relays themselves live in the submodules:

* :mod:`slimta.relay.smtp.client`: :class:`~slimta.relay.smtp.client.SmtpRelayClient`,
  one pooled connection to one next hop;
* :mod:`slimta.relay.smtp.static`: :class:`~slimta.relay.smtp.static.StaticSmtpRelay`
  and :class:`~slimta.relay.smtp.static.StaticLmtpRelay`, a pool of those
  clients for a fixed ``host:port``;
* :mod:`slimta.relay.smtp.mx`: :class:`~slimta.relay.smtp.mx.MxSmtpRelay`,
  which finds the next hop of each recipient domain in DNS;
* :mod:`slimta.relay.smtp.lmtpclient`: the LMTP flavour of the client.

Every failure a next hop reports becomes one of the two errors below, built
by :meth:`SmtpRelayError.factory` from the server's reply: a 5xx reply is
permanent (the queue bounces), anything else is transient (the queue
retries).  Failures with no server reply (timeouts, refused connections, DNS)
get a locally made reply with the matching enhanced status code.
"""

from __future__ import annotations

from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.smtp.reply import Reply

__all__ = ["SmtpPermanentRelayError", "SmtpRelayError", "SmtpTransientRelayError"]


class SmtpRelayError(RelayError):
    """A delivery over SMTP failed, with the reply that says why.

    Build instances with :meth:`factory`, which picks the subclass from the
    reply code.

    Args:
        type: ``'Transient'`` or ``'Permanent'``, used in the message text.
        reply: The :class:`~slimta.smtp.reply.Reply` explaining the failure;
            ``reply.command`` names the step that failed and
            ``reply.address`` the peer.
    """

    def __init__(self, type: str, reply: Reply) -> None:  # noqa: A002 - the 4.0 name
        super().__init__(f"{type} failure on {reply.command}: {reply}", reply)

    @staticmethod
    def factory(reply: Reply) -> SmtpRelayError:
        """Return the error matching ``reply``.

        Args:
            reply: A 4xx or 5xx reply.

        Returns:
            A :class:`SmtpPermanentRelayError` for a 5xx reply, otherwise a
            :class:`SmtpTransientRelayError`.
        """
        if (reply.code or "").startswith("5"):
            return SmtpPermanentRelayError(reply)
        return SmtpTransientRelayError(reply)


class SmtpTransientRelayError(SmtpRelayError, TransientRelayError):
    """A 4xx failure (or one without a reply): the queue tries again later.

    Args:
        reply: The reply explaining the failure.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__("Transient", reply)


class SmtpPermanentRelayError(SmtpRelayError, PermanentRelayError):
    """A 5xx failure: the queue bounces the message.

    Args:
        reply: The reply explaining the failure.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__("Permanent", reply)
