"""One pooled SMTP connection to one next hop: :class:`SmtpRelayClient`.

A :class:`~slimta.relay.smtp.static.StaticSmtpRelay` starts these greenlets
as deliveries arrive.  Each one connects, greets, encrypts and authenticates
once, then delivers envelopes taken from the pool's queue over that one
session until no work comes within ``idle_timeout`` (with no
``idle_timeout``, after the first delivery).

Choices made here, and why:

* **Every read has a deadline.**  Each step runs under ``command_timeout``;
  the reply to the message data (after the final dot, or to ``BDAT LAST``)
  under ``data_timeout``.  A server that goes silent costs one timeout and a
  ``4.4.2`` retry, never a stuck greenlet.
* **Opportunistic TLS by default** (RFC 7435, Postfix's ``may``): STARTTLS
  whenever offered, certificate unchecked when no ``context`` was given.
  If the handshake fails the client reconnects and delivers in cleartext,
  unless ``tls_required`` is set or the given ``context`` verifies
  certificates; then the delivery fails transiently with ``4.7.5``.
* **A TLS policy, when given** (``tls_requirement``, from
  :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy`), replaces the rules
  above: ``encrypt``, ``verify`` and ``dane`` never send in cleartext, and
  a failure names the policy (``451 4.7.5 TLS policy dane not met by
  mx.example.com: ...``).  REQUIRETLS envelopes go only over verified TLS
  to a server offering REQUIRETLS, else fail with ``550 5.7.30``.
* **EHLO falls back to HELO** on any 5xx reply to EHLO.
* **No password in cleartext.**  AUTH picks the best mechanism both sides
  know (unknown ones such as GSSAPI are ignored) and never PLAIN or LOGIN on
  an unencrypted connection unless :attr:`SmtpRelayClient.allow_cleartext_auth`
  is set.  AUTH failures are transient, as Postfix soft-bounces them.
* **A reused connection the server closed is replaced** without failing
  the delivery: the socket is checked before reuse, and if it dies before
  the server said anything about the new transaction, the client
  reconnects once and tries again.
* **The message is made to fit the server**: ``BODY=8BITMIME`` and
  ``SMTPUTF8`` when needed and offered, a 7-bit re-encoding when 8BITMIME is
  missing (``554 5.6.3`` if impossible), ``553 5.6.7`` for UTF-8 addresses
  without SMTPUTF8, ``SIZE``, DSN parameters, and BDAT when CHUNKING is
  offered.

Every failure is a :class:`~slimta.relay.smtp.SmtpRelayError` whose reply
names the failing step in ``reply.command`` (``[CONNECT]``, ``[BANNER]``,
``EHLO``, ``STARTTLS``, ``[TLS]``, ``AUTH``, ``MAIL``, ``RCPT``, ``DATA``,
``[SEND_DATA]``, ``BDAT``) and the peer in ``reply.address``.  When only
some recipients are refused, :meth:`~slimta.relay.Relay.attempt` returns a
dict ``{recipient: Reply or RelayError}``.

What lives where: this module holds the session (connect, greet, AUTH,
deliver, reuse, tear down).  :class:`SmtpRelayClient` inherits the rest
from mixins in private modules next to it, so no call pays for the split:
the step machinery (deadlines, local failures, the stale-connection guard)
from ``_clientsteps.py``; STARTTLS, implicit TLS, TLS policies and DANE
from ``_clienttls.py``; the MAIL parameters and 7-bit conversion that make
a message fit the server from ``_clientfit.py``.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from gevent import socket as gsocket

from slimta.bounce.dsn import rcpt_params
from slimta.relay import RelayError, TransientRelayError
from slimta.relay.pool import RelayPoolClient
from slimta.relay.smtp import SmtpRelayError, SmtpTransientRelayError
from slimta.relay.smtp._clientfit import MessageFitMixin
from slimta.relay.smtp._clientsteps import _LocalFailure, _StaleConnection, _StepTimedOut
from slimta.relay.smtp._clienttls import TlsMixin, _TlsFallback
from slimta.relay.smtp.tlspolicy import TlsRequirement
from slimta.smtp.client import Client
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSError

if TYPE_CHECKING:
    from gevent.event import AsyncResult

    from slimta.envelope import Envelope
    from slimta.util.deque import BlockingDeque

__all__ = ["SmtpRelayClient"]

_log = logging.getLogger(__name__)

#: Result of one delivery: a reply for every recipient, or one per recipient.
DeliveryResult = Reply | dict[str, Reply | RelayError]

_fqdn: str | None = None


def _local_name() -> str:
    # gevent's getfqdn resolves through gevent's resolver, off the hub; the
    # answer is computed once, on first use, not at import time.
    global _fqdn
    if _fqdn is None:
        _fqdn = gsocket.getfqdn()
    return _fqdn


class SmtpRelayClient(MessageFitMixin, TlsMixin, RelayPoolClient):
    """Deliver envelopes over one SMTP session, reused while work keeps coming.

    Args:
        address: The ``(host, port)`` of the next hop.
        queue: The pool's request queue (see :class:`~slimta.relay.pool.RelayPool`).
        socket_creator: Called as ``socket_creator(address)`` to open every
            connection; defaults to :func:`gevent.socket.create_connection`.
            :func:`slimta.util.build_ipv4_socket_creator` gives an IPv4-only one.
        ehlo_as: The name sent with EHLO/HELO (or a function of ``address``
            returning it); defaults to this host's FQDN.
        context: The :class:`ssl.SSLContext` for STARTTLS.  ``None`` means
            opportunistic TLS without certificate checks; a context that
            verifies certificates makes TLS mandatory once it is offered.
        auth_mechanism: The SASL mechanism to use; ``None`` picks the best
            one both sides support.
        tls_immediately: Encrypt right after connecting (port 465).
        tls_required: Fail (transiently) rather than send without TLS.
        connect_timeout: Seconds allowed to connect.
        command_timeout: Seconds allowed for each reply.
        data_timeout: Seconds allowed for the reply to the message data;
            defaults to ``command_timeout``.
        idle_timeout: Seconds to keep an idle connection open for the next
            delivery; ``None`` closes it after each delivery.
        credentials: ``(authcid, secret[, authzid])``, or a function returning
            it, to authenticate with; ``None`` skips AUTH.
        binary_encoder: The :mod:`email.encoders` function used by
            :meth:`~slimta.envelope.Envelope.encode_7bit` for servers without
            8BITMIME.
        tls_requirement: A :class:`~slimta.relay.smtp.tlspolicy.TlsRequirement`
            that overrides ``context`` and ``tls_required`` for STARTTLS
            (the MX relay passes the one its ``tls_policy`` chose).

            .. versionadded:: 0.1.0

    Attributes:
        client: The :class:`~slimta.smtp.client.Client` of the open session,
            or ``None``.
    """

    _client_class: ClassVar[type[Client]] = Client

    #: Use BDAT when the server offers CHUNKING (one round trip per message
    #: with PIPELINING, no dot-stuffing).
    use_chunking: ClassVar[bool] = True

    #: Allow PLAIN and LOGIN over an unencrypted connection.  Off: only a
    #: subclass that sets it on purpose sends passwords in the clear.
    allow_cleartext_auth: ClassVar[bool] = False

    def __init__(
        self,
        address: tuple[str, int],
        queue: BlockingDeque[Any],
        socket_creator: Callable[..., Any] | None = None,
        ehlo_as: str | Callable[[Any], str] | None = None,
        context: ssl.SSLContext | None = None,
        auth_mechanism: str | None = None,
        tls_immediately: bool = False,
        tls_required: bool = False,
        connect_timeout: float | None = 10.0,
        command_timeout: float | None = 10.0,
        data_timeout: float | None = None,
        idle_timeout: float | None = None,
        credentials: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        binary_encoder: Callable[..., Any] | None = None,
        *,
        tls_requirement: TlsRequirement | None = None,
    ) -> None:
        super().__init__(queue, idle_timeout)
        self.address = address
        self._socket_creator: Callable[..., Any] = socket_creator or gsocket.create_connection
        self.client: Client | None = None
        self.ehlo_as = ehlo_as
        self.context = context
        self.auth_mechanism = auth_mechanism
        self.tls_immediately = tls_immediately
        self.tls_required = tls_required
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout if data_timeout is not None else command_timeout
        self.credentials = credentials
        self.binary_encoder = binary_encoder
        self.tls_requirement = tls_requirement
        # Set once opportunistic TLS failed with this peer: later connections
        # of this client go straight to cleartext.
        self._tls_broken = False
        # Set once a report-only (MTA-STS testing) verification failed: later
        # connections use opportunistic TLS.
        self._tls_downgraded = False
        #: True while the session's TLS authenticated the server (verify/dane).
        self.tls_verified = False
        # Step deadlines: a gevent.Timeout per step was a measurable share
        # of the relay's CPU per message; these libev timers are re-armed.
        self._timers: dict[float, tuple[Any, _StepTimedOut]] = {}

    # Errors, replies and step deadlines: StepsMixin (_clientsteps.py);
    # TLS rules, handshakes and DANE: TlsMixin (_clienttls.py); MAIL
    # parameters and 7-bit conversion: MessageFitMixin (_clientfit.py).

    # -- the greenlet -------------------------------------------------------------

    def _run(self) -> None:
        result, envelope = self.poll()
        try:
            while result is not None and envelope is not None:
                self._serve(result, envelope)
                self._current_result = None
                if self.idle_timeout is None:
                    break
                result, envelope = self.poll()
        finally:
            self._disconnect()
            timers, self._timers = self._timers, {}
            for timer, _ in timers.values():
                timer.close()

    def _serve(self, result: AsyncResult[Any], envelope: Envelope) -> None:
        try:
            outcome = self._attempt(envelope)
        except RelayError as exc:
            result.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the caller waiting
            _log.exception("unexpected error delivering to %s", self.address)
            self._close()
            result.set_exception(
                TransientRelayError(str(exc), self._reply("451", "4.3.0 Unhandled error", "[DELIVER]"))
            )
        else:
            result.set(outcome)

    def _attempt(self, envelope: Envelope) -> DeliveryResult:
        reused = self.client is not None
        if reused and not self._usable():
            self._close()
            reused = False
        if self.client is None:
            self._open()
        try:
            return self._deliver_safely(envelope)
        except _StaleConnection:
            if not reused:
                raise
        # The pooled connection had been closed by the server: once more,
        # on a fresh one.
        self._open()
        return self._deliver_safely(envelope)

    def _usable(self) -> bool:
        client = self.client
        if client is None:
            return False
        try:
            return client.io.socket.fileno() >= 0 and not client.has_reply_waiting()
        except OSError:
            return False

    # -- session set-up -----------------------------------------------------------

    def _open(self) -> None:
        try:
            # At most two fallbacks: a report-only policy to opportunistic
            # TLS, then opportunistic TLS to cleartext.
            for _ in range(3):
                try:
                    self._connect()
                    self._handshake()
                except _TlsFallback:
                    self._close()
                    self._fall_back()
                else:
                    return
            raise self._transient("4.7.5 TLS handshake failed", "[TLS]")
        except BaseException:
            self._close()
            raise

    def _connect(self) -> None:
        with self._step("[CONNECT]", self.connect_timeout):
            try:
                sock = self._socket_creator(self.address)
            except DNSError as exc:
                raise self._transient(f"4.4.3 Cannot resolve {self.address[0]}: {exc}", "[CONNECT]") from None
            except OSError as exc:
                raise self._transient(
                    f"4.4.1 Connection to {self.address} failed: {exc}", "[CONNECT]"
                ) from None
        self.client = self._client_class(sock, self.address)
        self.client.allow_cleartext_auth = self.allow_cleartext_auth

    def _handshake(self) -> None:
        client = self._require_client()
        if self.tls_immediately:
            self._encrypt_now(client)
        with self._step("[BANNER]", self.command_timeout):
            banner = client.get_banner()
        if banner.is_error():
            raise SmtpRelayError.factory(banner)
        self._greet(client)
        req = self._requirement
        if req is not None and req.level == "none":
            pass
        elif not self.tls_immediately and not self._tls_broken:
            if "STARTTLS" in client.extensions:
                self._starttls(client)
            elif req is not None and req.demands_tls:
                raise self._policy_failure("STARTTLS is not offered", "4.7.10")
            elif req is None and self.tls_required:
                raise self._transient("4.7.10 TLS is required but the server does not offer it", "STARTTLS")
            elif req is not None and req.report_only:
                req.note("starttls-not-supported")
                _log.warning("TLS policy %s (testing) not met by %s: no STARTTLS", req.policy, self.address)
        if self.credentials:
            self._authenticate(client)

    def _require_client(self) -> Client:
        if self.client is None:
            raise self._transient("4.4.2 Not connected", "[CONNECT]")
        return self.client

    def _greeting_name(self) -> str:
        if callable(self.ehlo_as):
            return self.ehlo_as(self.address)
        return self.ehlo_as or _local_name()

    def _greet(self, client: Client) -> None:
        name = self._greeting_name()
        with self._step("EHLO", self.command_timeout):
            reply = client.ehlo(name)
        if (reply.code or "").startswith("5"):
            with self._step("HELO", self.command_timeout):
                reply = client.helo(name)
        if reply.is_error():
            raise SmtpRelayError.factory(reply)

    def _authenticate(self, client: Client) -> None:
        creds = self.credentials() if callable(self.credentials) else self.credentials
        authcid, secret, *rest = list(creds or ("", ""))
        authzid = rest[0] if rest else None
        with self._step("AUTH", self.command_timeout):
            reply = client.auth(authcid, secret, authzid, self.auth_mechanism)
        if reply.is_error():
            reply.command = "AUTH"
            reply.address = self.address
            # As Postfix does by default: a failed login is a configuration
            # problem to fix, not a reason to bounce the mail.
            raise SmtpTransientRelayError(reply)

    # -- delivery -------------------------------------------------------------------

    def _deliver_safely(self, envelope: Envelope) -> DeliveryResult:
        try:
            return self._deliver(envelope)
        except _LocalFailure:
            # No telling what state the session is in: start afresh.
            self._close()
            raise
        except SmtpRelayError:
            # The server refused something: the session is still usable.
            self._rset()
            raise

    def _rset(self) -> None:
        client = self.client
        if client is None:
            return
        try:
            with self._step("RSET", self.command_timeout):
                reply = client.rset()
        except SmtpRelayError:
            self._close()
            return
        if reply.is_error():
            self._close()

    def _deliver(self, envelope: Envelope) -> DeliveryResult:
        client = self._require_client()
        envelope, params = self._prepare(client, envelope)
        header, body = envelope.flatten()
        pipelined = "PIPELINING" in client.extensions
        dsn = "DSN" in client.extensions
        size = len(header) + len(body)
        if pipelined:
            # With PIPELINING these calls only queue the commands, sent with
            # DATA or BDAT in one write: nothing to time or to fail yet.
            mail = client.mailfrom(envelope.sender or "", size, params=params)
            rcpts = [
                client.rcptto(rcpt, self._rcpt_params(envelope, rcpt, dsn)) for rcpt in envelope.recipients
            ]
            return self._send_message(client, envelope, mail, rcpts, header, body)
        # Until MAIL is answered, a failure is charged to MAIL.
        with self._stale_guard(None), self._step("MAIL", self.command_timeout):
            mail = client.mailfrom(envelope.sender or "", size, params=params)
        if mail.is_error():
            raise SmtpRelayError.factory(mail)
        with self._step("RCPT", self.command_timeout):
            rcpts = [
                client.rcptto(rcpt, self._rcpt_params(envelope, rcpt, dsn)) for rcpt in envelope.recipients
            ]
        if all(reply.is_error() for reply in rcpts):
            return self._merge(envelope.recipients, rcpts, Reply())
        return self._send_message(client, envelope, mail, rcpts, header, body)

    @staticmethod
    def _rcpt_params(envelope: Envelope, rcpt: str, dsn: bool) -> dict[str, str | bool] | None:
        return dict(rcpt_params(envelope, rcpt)) if dsn else None

    def _open_data(
        self, client: Client, envelope: Envelope, mail: Reply, rcpts: list[Reply]
    ) -> DeliveryResult | None:
        """Send DATA; return the result when the transaction ends there.

        That is when MAIL or every RCPT was refused (a server that said 354
        anyway gets an empty message), or DATA itself was refused.  None
        means: send the message now.
        """
        with (
            self._stale_guard(mail),
            self._step(self._step_of(mail, rcpts, "DATA"), self.command_timeout),
        ):
            data = client.data()
        if mail.is_error() or all(reply.is_error() for reply in rcpts):
            if data.code == "354":
                with self._step("[SEND_DATA]", self.data_timeout):
                    client.send_empty_data()
            if mail.is_error():
                raise SmtpRelayError.factory(mail)
            return self._merge(envelope.recipients, rcpts, data)
        if data.is_error():
            raise SmtpRelayError.factory(data)
        return None

    def _send_message(
        self, client: Client, envelope: Envelope, mail: Reply, rcpts: list[Reply], header: bytes, body: bytes
    ) -> DeliveryResult:
        if self.use_chunking and "CHUNKING" in client.extensions:
            with self._stale_guard(mail), self._step(self._step_of(mail, rcpts, "BDAT"), self.data_timeout):
                final = client.send_bdat(header, body)
            if mail.is_error():
                raise SmtpRelayError.factory(mail)
            if all(reply.is_error() for reply in rcpts):
                return self._merge(envelope.recipients, rcpts, final)
        else:
            done = self._open_data(client, envelope, mail, rcpts)
            if done is not None:
                return done
            with self._step("[SEND_DATA]", self.data_timeout):
                final = client.send_data(header, body)
        if final.is_error():
            raise SmtpRelayError.factory(final)
        return self._merge(envelope.recipients, rcpts, final)

    @staticmethod
    def _merge(recipients: list[str], rcpts: list[Reply], final: Reply) -> DeliveryResult:
        """One reply for all, or a dict when some recipients were refused.

        Raises:
            SmtpRelayError: The only recipient was refused.
        """
        if not any(reply.is_error() for reply in rcpts):
            return final
        if len(rcpts) == 1:
            raise SmtpRelayError.factory(rcpts[0])
        results: dict[str, Reply | RelayError] = {}
        for rcpt, reply in zip(recipients, rcpts, strict=True):
            results[rcpt] = SmtpRelayError.factory(reply) if reply.is_error() else final
        return results

    # -- tear-down -------------------------------------------------------------------

    def _close(self) -> None:
        self.tls_verified = False
        client, self.client = self.client, None
        if client is not None:
            client.io.close()

    def _disconnect(self) -> None:
        client = self.client
        if client is None:
            return
        with contextlib.suppress(RelayError), self._step("QUIT", self.command_timeout):
            client.quit()
        self._close()
