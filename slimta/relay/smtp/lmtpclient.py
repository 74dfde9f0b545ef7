"""One pooled LMTP connection (RFC 2033): :class:`LmtpRelayClient`.

LMTP differs from SMTP where it matters to a relay: the greeting is LHLO
(there is no HELO to fall back to), and after the message data the server
answers once per accepted recipient, so one recipient's mailbox may be full
while the others got the message.  :meth:`~slimta.relay.Relay.attempt`
therefore returns ``{recipient: Reply or RelayError}`` whenever any
recipient failed.  BDAT is not used: LMTP's per-recipient replies after a
chunk add nothing here, and DATA works with every LMTP server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from slimta.relay.smtp import SmtpRelayError
from slimta.relay.smtp.client import DeliveryResult, SmtpRelayClient
from slimta.smtp.client import Client, LmtpClient
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.relay import RelayError

__all__ = ["LmtpRelayClient"]


class LmtpRelayClient(SmtpRelayClient):
    """Deliver envelopes over one LMTP session.

    Takes the arguments of :class:`~slimta.relay.smtp.client.SmtpRelayClient`.
    """

    _client_class: ClassVar[type[Client]] = LmtpClient
    use_chunking: ClassVar[bool] = False

    def _greet(self, client: Client) -> None:
        assert isinstance(client, LmtpClient)
        with self._step("LHLO", self.command_timeout):
            reply = client.lhlo(self._greeting_name())
        if reply.is_error():
            raise SmtpRelayError.factory(reply)

    def _send_message(
        self, client: Client, envelope: Envelope, mail: Reply, rcpts: list[Reply], header: bytes, body: bytes
    ) -> DeliveryResult:
        assert isinstance(client, LmtpClient)
        done = self._open_data(client, envelope, mail, rcpts)
        if done is not None:
            return done
        with self._step("[SEND_DATA]", self.data_timeout):
            per_rcpt = client.send_data(header, body)
        return self._merge_lmtp(envelope.recipients, rcpts, per_rcpt)

    @staticmethod
    def _merge_lmtp(
        recipients: list[str], rcpts: list[Reply], per_rcpt: list[tuple[str, Reply]]
    ) -> DeliveryResult:
        results: dict[str, Reply | RelayError] = {}
        data_replies = iter(per_rcpt)
        for rcpt, rcpt_reply in zip(recipients, rcpts, strict=True):
            # Data replies come in the order of the accepted recipients.
            reply = rcpt_reply if rcpt_reply.is_error() else next(data_replies)[1]
            results[rcpt] = SmtpRelayError.factory(reply) if reply.is_error() else reply
        if len(results) == 1:
            only = next(iter(results.values()))
            if isinstance(only, SmtpRelayError):
                raise only
            if isinstance(only, Reply):
                return only
        return results
