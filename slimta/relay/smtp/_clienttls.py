"""The TLS side of :class:`~slimta.relay.smtp.client.SmtpRelayClient`.

What the client does about encryption, kept apart from the SMTP dialogue
in :mod:`slimta.relay.smtp.client` (which decides *when* to call these):

* which rules apply: a :class:`~slimta.relay.smtp.tlspolicy.TlsRequirement`
  when one was given (a report-only one stops applying after its first
  failure), else the ``context`` and ``tls_required`` arguments;
* the handshake itself, by STARTTLS or at once (port 465), with the
  context and server name the rules call for;
* after it, the DANE check of the server's certificate chain against the
  TLSA records, and whether the server counts as authenticated
  (:attr:`SmtpRelayClient.tls_verified`);
* failures: a fallback to cleartext for opportunistic TLS
  (:class:`_TlsFallback`), otherwise a relay error naming the policy.

:class:`TlsMixin` carries these methods; :class:`SmtpRelayClient` inherits
them, so no call goes through an extra layer.  Log lines keep the logger
of :mod:`slimta.relay.smtp.client`.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from slimta.relay.smtp import SmtpRelayError, SmtpTransientRelayError
from slimta.relay.smtp._clientsteps import StepsMixin
from slimta.relay.smtp.tlspolicy import TlsPolicyFailure, TlsRequirement, match_tlsa, requiretls_failure
from slimta.smtp import SmtpError
from slimta.smtp.client import Client, TlsHandshakeFailed, opportunistic_context

__all__ = ["TlsMixin"]

_log = logging.getLogger("slimta.relay.smtp.client")


class _TlsFallback(SmtpError):
    """Opportunistic TLS failed; the caller reconnects in cleartext."""


class TlsMixin(StepsMixin):
    """STARTTLS, implicit TLS, TLS policies and DANE for :class:`SmtpRelayClient`."""

    client: Client | None
    context: ssl.SSLContext | None
    tls_required: bool
    tls_requirement: TlsRequirement | None
    tls_verified: bool
    command_timeout: float | None
    _tls_broken: bool
    _tls_downgraded: bool

    if TYPE_CHECKING:

        def _close(self) -> None: ...

        def _greet(self, client: Client) -> None: ...

    @property
    def _requirement(self) -> TlsRequirement | None:
        req = self.tls_requirement
        if req is not None and req.report_only and self._tls_downgraded:
            return None
        return req

    @property
    def _tls_demanded(self) -> bool:
        req = self._requirement
        if req is not None:
            return req.demands_tls
        context = self.context
        return self.tls_required or (context is not None and context.verify_mode != ssl.CERT_NONE)

    def _policy_failure(self, reason: str, code: str = "4.7.5") -> SmtpRelayError:
        req = self._requirement
        host = str(self._server_hostname or self.address[0])
        if req is None:
            return self._transient(f"{code} {reason}", "[TLS]")
        req.note("starttls-not-supported" if code == "4.7.10" else "validation-failure")
        if req.requiretls:
            # RFC 8689 section 4.2.1: no other way is allowed; a bounce.
            return requiretls_failure(host, reason)
        exc = TlsPolicyFailure(req.policy, host, reason, code)
        exc.reply.address = self.address
        return exc

    @property
    def _server_hostname(self) -> str | None:
        host: Any = self.address[0]
        return host if isinstance(host, str) else None

    def _fall_back(self) -> None:
        req = self._requirement
        if req is not None and req.report_only:
            req.note("validation-failure")
            _log.warning("TLS policy %s (testing) not met by %s; delivering anyway", req.policy, self.address)
            self._tls_downgraded = True
        else:
            _log.info("TLS with %s failed; delivering in cleartext", self.address)
            self._tls_broken = True

    def _tls_context(self) -> tuple[ssl.SSLContext, str | None]:
        """The context and server name for the handshake, from the policy or the arguments."""
        req = self._requirement
        if req is None or req.level == "may":
            return self.context or opportunistic_context(), self._server_hostname
        hostname = req.hostname or self._server_hostname
        if req.level == "verify":
            return req.verify_context(), hostname
        # encrypt, and dane (whose check follows the handshake).
        return opportunistic_context(), hostname

    def _encrypted(self, client: Client) -> None:
        """After a handshake: check DANE, note whether the server was authenticated."""
        req = self._requirement
        if req is None:
            context = self.context
            self.tls_verified = context is not None and context.verify_mode != ssl.CERT_NONE
            return
        if req.level == "dane":
            hostname = req.hostname or str(self.address[0])
            how = match_tlsa(req.tlsa, _peer_chain(client), hostname)
            if how is None:
                self._close()
                raise self._policy_failure("no TLSA record matches the certificate")
            _log.info("DANE %s match for %s", how, self.address)
        self.tls_verified = req.verifies
        req.note(None)

    def _encrypt_now(self, client: Client) -> None:
        context, hostname = self._tls_context()
        try:
            with self._step("[TLS]", self.command_timeout):
                client.encrypt(context, hostname)
        except TlsHandshakeFailed:
            raise self._policy_failure("TLS handshake failed") from None
        self._encrypted(client)

    def _starttls(self, client: Client) -> None:
        context, hostname = self._tls_context()
        try:
            with self._step("STARTTLS", self.command_timeout):
                reply = client.starttls(context, hostname)
        except TlsHandshakeFailed:
            if self._tls_demanded:
                reason = "TLS handshake failed"
                if context.verify_mode != ssl.CERT_NONE:
                    reason += " (certificate not verified)"
                raise self._policy_failure(reason) from None
            raise _TlsFallback("TLS handshake failed") from None
        if reply.code != "220":
            if self._requirement is not None and self._tls_demanded:
                raise self._policy_failure(f"STARTTLS refused: {reply}", "4.7.10")
            if self.tls_required:
                raise SmtpTransientRelayError(reply)
            return
        self._encrypted(client)
        self._greet(client)


def _peer_chain(client: Client) -> list[bytes]:
    """The DER certificates the server sent, its own first (empty if unknown)."""
    sock = client.io.socket
    sslobj = getattr(sock, "_sslobj", None)
    chain_of = getattr(sslobj, "get_unverified_chain", None)
    if chain_of is not None:
        try:
            # Python 3.10-3.12 keep this private on the _ssl object; 3.13
            # makes it public.  DER is encoding 2.
            return [cert.public_bytes(2) for cert in chain_of() or ()]
        except (ValueError, OSError, TypeError):
            pass
    leaf = sock.getpeercert(binary_form=True) if hasattr(sock, "getpeercert") else None
    return [leaf] if leaf else []
