"""Making a message fit the server, for :class:`~slimta.relay.smtp.client.SmtpRelayClient`.

Before MAIL, the client decides from the server's EHLO extensions how the
envelope can be sent, or that it cannot be:

* REQUIRETLS (RFC 8689): only over verified TLS to a server offering it,
  else a ``550 5.7.30`` bounce;
* UTF-8 addresses need SMTPUTF8 (else ``553 5.6.7``);
* an 8-bit message goes with ``BODY=8BITMIME`` (and SMTPUTF8 for 8-bit
  headers) when offered, else as a 7-bit re-encoded copy (``554 5.6.3``
  when that is impossible);
* the DSN parameters of the envelope go along when DSN is offered.

:class:`MessageFitMixin` carries these methods; :class:`SmtpRelayClient`
inherits them, so no call goes through an extra layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from slimta.bounce.dsn import mail_params
from slimta.envelope import EnvelopeError
from slimta.policy.requiretls import EHLO_KEYWORD, get_requiretls
from slimta.relay.smtp import SmtpPermanentRelayError
from slimta.relay.smtp._clientsteps import StepsMixin
from slimta.relay.smtp.tlspolicy import requiretls_failure

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.smtp.client import Client

__all__ = ["MessageFitMixin"]


class MessageFitMixin(StepsMixin):
    """MAIL parameters and 7-bit conversion for :class:`SmtpRelayClient`."""

    tls_verified: bool
    binary_encoder: Callable[..., Any] | None

    if TYPE_CHECKING:

        @property
        def _server_hostname(self) -> str | None: ...

    def _prepare(self, client: Client, envelope: Envelope) -> tuple[Envelope, dict[str, str | bool]]:
        """Decide the MAIL parameters; re-encode a copy for 7-bit servers."""
        ext = client.extensions
        params: dict[str, str | bool] = {}
        if get_requiretls(envelope):
            host = str(self._server_hostname or self.address[0])
            if not (self.tls_verified and client.io.encrypted):
                raise requiretls_failure(host, "is not reached over verified TLS")
            if EHLO_KEYWORD not in ext:
                raise requiretls_failure(host, "does not offer REQUIRETLS")
            params[EHLO_KEYWORD] = True
        if envelope.has_utf8_addresses():
            if "SMTPUTF8" not in ext:
                reply = self._reply("553", "5.6.7 Server does not support SMTPUTF8 addresses", "MAIL")
                raise SmtpPermanentRelayError(reply)
            params["SMTPUTF8"] = True
        if envelope.is_8bit():
            if "8BITMIME" in ext:
                params["BODY"] = "8BITMIME"
                if "SMTPUTF8" in ext and envelope.has_8bit_headers():
                    params["SMTPUTF8"] = True
            else:
                envelope = self._to_7bit(envelope)
        if "DSN" in ext:
            params.update(mail_params(envelope))
        return envelope, params

    def _to_7bit(self, envelope: Envelope) -> Envelope:
        conversion_failed = self._reply("554", "5.6.3 Conversion to 7-bit not possible", "MAIL")
        if envelope.has_8bit_headers():
            raise SmtpPermanentRelayError(conversion_failed)
        copy = envelope.copy()
        try:
            copy.encode_7bit(self.binary_encoder)
        except (EnvelopeError, UnicodeError, ValueError, TypeError):
            raise SmtpPermanentRelayError(conversion_failed) from None
        return copy
