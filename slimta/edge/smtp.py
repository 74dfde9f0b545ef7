"""The SMTP edge: receive messages over SMTP and hand them to the queue.

:class:`SmtpEdge` listens, runs one :class:`slimta.smtp.server.Server` per
connection, and drives it with a :class:`SmtpSession`, which builds the
:class:`~slimta.envelope.Envelope` and calls the user's
:class:`SmtpValidators` hooks.  The client is answered ``250`` only after
the queue has stored the message; a queue error answers ``451 4.3.0`` (or
the error's own reply).

Writing validators::

    class MyValidators(SmtpValidators):
        def handle_rcpt(self, reply, recipient, params):
            if not recipient.endswith("@example.com"):
                reply.code = "550"
                reply.message = "5.7.1 Relaying denied"

Each hook receives the default reply and changes it to refuse; a code of
221 or 421 also closes the connection.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from slimta import logging as slimta_logging
from slimta.bounce.dsn import DsnError, parse_mail_params, parse_rcpt_params, set_dsn, set_recipient_dsn
from slimta.envelope import Envelope
from slimta.smtp import ConnectionLost, MessageTooBig, SmtpError
from slimta.smtp.server import Server

from . import EdgeServer

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from gevent.pool import Pool

__all__ = ["SmtpEdge", "SmtpSession", "SmtpValidators"]

_log = logging.getLogger(__name__)


class SmtpValidators:
    """Base class for the hooks that check each step of an SMTP session.

    Subclasses implement any of these methods; each gets the reply the
    server is about to send and may change its ``code`` and ``message``:

    - ``handle_banner(reply, address)``: the client connected.
    - ``handle_ehlo(reply, ehlo_as)`` / ``handle_helo(reply, helo_as)``.
    - ``handle_tls()``: a TLS handshake completed (at connect or STARTTLS);
      ``handle_tls2(ssl_socket)`` gets the TLS socket too.
    - ``handle_auth(reply, creds)``: the client authenticated; call
      ``creds.check_secret(secret)`` with the user's stored secret (a plain
      string or a passlib hash) and refuse with ``535`` if it fails.  Without
      this hook every AUTH attempt fails.
    - ``handle_mail(reply, sender, params)``, ``handle_rcpt(reply, recipient,
      params)``: the envelope addresses and their ESMTP parameters.
    - ``handle_data(reply)``: before message data is accepted.
    - ``handle_have_data(reply, data)``: the whole message, before queueing.
    - ``handle_queued(reply, results)``: after the queue answered; ``results``
      is what ``queue.enqueue`` returned.
    - ``handle_rset(reply)``: the client reset its transaction.

    Args:
        session: the :class:`SmtpSession`, kept as :attr:`session`; it has
            ``address``, ``extended_smtp``, ``security``, ``ehlo_as``,
            ``auth``, ``envelope``, ``reverse_address`` and ``protocol``.
    """

    def __init__(self, session: SmtpSession) -> None:
        self.session = session


class SmtpSession:
    """The handlers object of one SMTP connection: state, envelope and hooks.

    Args:
        address: the client's address tuple.
        validator_class: a :class:`SmtpValidators` subclass, or None.
        handoff: called with the finished envelope; returns the queue results.
    """

    #: Messages with more ``Received`` headers than this are refused with
    #: ``554 5.4.6`` (Postfix's ``hopcount_limit``).
    max_hops = 50

    def __init__(
        self,
        address: Any,
        validator_class: type[SmtpValidators] | None,
        handoff: Callable[[Envelope], list[tuple[Envelope, Any]]],
    ) -> None:
        self.address = address
        self.handoff = handoff
        #: True once the client said EHLO (rather than HELO).
        self.extended_smtp = False
        #: ``'TLS'`` once the connection is encrypted, else None.
        self.security: str | None = None
        self.ehlo_as: str | None = None
        #: ``(authcid, authzid)`` once the client authenticated, else None.
        self.auth: tuple[str, str | None] | None = None
        self.envelope: Envelope | None = None
        #: The client's PTR name, when a lookup has filled it in.
        self.reverse_address: str | None = None
        #: Set by SmtpEdge: the name recorded as ``envelope.receiver``.
        self.hostname: str | None = None
        self.validators = validator_class(self) if validator_class else None

    @property
    def protocol(self) -> str:
        """The RFC 3848 protocol name: SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA."""
        proto = "ESMTP" if self.extended_smtp else "SMTP"
        if self.security == "TLS":
            proto += "S"
        if self.auth is not None:
            proto += "A"
        return proto

    def _call_validator(self, name: str, *args: Any) -> None:
        method = getattr(self.validators, "handle_" + name, None)
        if method is not None:
            method(*args)

    def BANNER_(self, reply: Any) -> None:
        self._call_validator("banner", reply, self.address)

    def EHLO(self, reply: Any, ehlo_as: str) -> None:
        self._call_validator("ehlo", reply, ehlo_as)
        if reply.code == "250":
            self.extended_smtp = True
            self.ehlo_as = ehlo_as
            self.envelope = None

    def HELO(self, reply: Any, helo_as: str) -> None:
        self._call_validator("helo", reply, helo_as)
        if reply.code == "250":
            self.extended_smtp = False
            self.ehlo_as = helo_as
            self.envelope = None

    def TLSHANDSHAKE(self) -> None:
        self.security = "TLS"
        self._call_validator("tls")

    def TLSHANDSHAKE2(self, ssl_socket: Any) -> None:
        self._call_validator("tls2", ssl_socket)

    def AUTH(self, reply: Any, creds: Any) -> None:
        if self.validators is None or not hasattr(self.validators, "handle_auth"):
            # Nobody can check the secret: fail closed.
            reply.code = "535"
            reply.message = "5.7.8 Authentication credentials invalid"
            return
        self._call_validator("auth", reply, creds)
        if reply.code == "235":
            self.auth = (creds.authcid, creds.authzid)

    def RSET(self, reply: Any) -> None:
        self._call_validator("rset", reply)
        self.envelope = None

    def MAIL(self, reply: Any, address: str, params: dict[str, Any]) -> None:
        try:
            dsn = parse_mail_params(_dsn_params(params, ("RET", "ENVID")))
        except DsnError as exc:
            reply.code = "501"
            reply.message = f"5.5.4 {exc}"
            return
        self._call_validator("mail", reply, address, params)
        if reply.code == "250":
            self.envelope = Envelope(sender=address)
            if dsn.ret is not None or dsn.envid is not None:
                set_dsn(self.envelope, dsn)

    def RCPT(self, reply: Any, address: str, params: dict[str, Any]) -> None:
        try:
            rcpt_dsn = parse_rcpt_params(_dsn_params(params, ("NOTIFY", "ORCPT")))
        except DsnError as exc:
            reply.code = "501"
            reply.message = f"5.5.4 {exc}"
            return
        self._call_validator("rcpt", reply, address, params)
        if reply.code == "250" and self.envelope is not None:
            self.envelope.recipients.append(address)
            if rcpt_dsn is not None:
                set_recipient_dsn(self.envelope, address, rcpt_dsn)

    def DATA(self, reply: Any) -> None:
        self._call_validator("data", reply)

    def HAVE_DATA(self, reply: Any, data: bytes | None, err: SmtpError | None) -> None:
        if err is not None or data is None:
            if isinstance(err, MessageTooBig):
                reply.code = "552"
                reply.message = "5.3.4 Message exceeded size limit"
            self.envelope = None
            return
        self._call_validator("have_data", reply, data)
        envelope, self.envelope = self.envelope, None
        if reply.code != "250" or envelope is None:
            return
        envelope.client.update(
            ip=self.address[0] if self.address else None,
            host=self.reverse_address,
            name=self.ehlo_as,
            protocol=self.protocol,
            auth=self.auth[0] if self.auth else None,
        )
        envelope.timestamp = time.time()
        try:
            envelope.parse(data)
        except Exception:  # noqa: BLE001 - any parse failure refuses this one message
            slimta_logging.log_exception(__name__)
            reply.code = "554"
            reply.message = "5.6.0 Message could not be parsed"
            return
        received = envelope.headers.get_all("Received") if envelope.headers is not None else None
        hops = len(received or ())
        if hops > self.max_hops:
            # RFC 5321 6.3: a message that has passed this many MTAs is
            # looping; refuse it rather than pass it round again.
            reply.code = "554"
            reply.message = f"5.4.6 Too many hops ({hops} Received headers), probable mail loop"
            return
        results = self.handoff(envelope)
        self._queued_reply(reply, results)
        self._call_validator("queued", reply, results)

    @staticmethod
    def _queued_reply(reply: Any, results: list[tuple[Envelope, Any]]) -> None:
        from slimta.core import SlimtaError

        for _, outcome in results:
            if isinstance(outcome, SlimtaError):
                error_reply = getattr(outcome, "reply", None)
                if error_reply:
                    reply.copy(error_reply)
                else:
                    reply.code = "451"
                    reply.message = "4.3.0 Error queuing message"
                return
        ids = ", ".join(str(outcome) for _, outcome in results)
        reply.message = f"2.6.0 Message accepted for delivery (queued as {ids})" if ids else None
        if not ids:
            reply.message = "2.6.0 Message accepted for delivery"


def _dsn_params(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str | None]:
    """The RFC 3461 parameters among ``params`` (the core gives True for a bare keyword)."""
    return {key: (None if value is True else value) for key, value in params.items() if key in keys}


class SmtpEdge(EdgeServer):
    """Receive mail over SMTP.

    Args:
        listener: ``(ip, port)`` or a listening socket.
        queue: the queue to hand messages to (its ``enqueue``).
        pool: optional :class:`gevent.pool.Pool` bounding concurrent sessions.
        max_size: the largest message accepted, in octets (advertised with
            SIZE).  None keeps the default limit of
            :attr:`slimta.smtp.protocol.SmtpLimits.max_message_size`.
        validator_class: a :class:`SmtpValidators` subclass.
        auth: True, or a list of SASL mechanism names, to offer AUTH.
        context: an :class:`ssl.SSLContext` for STARTTLS (or implicit TLS).
        tls_immediately: encrypt before the banner (port 465 style).
        command_timeout: seconds to wait for each command (default 300).
        data_timeout: seconds for a whole message's data (default 600).
        hostname: this MTA's name (banner, ``envelope.receiver``).
        session_class: the handlers class, :class:`SmtpSession` by default.
    """

    def __init__(
        self,
        listener: Any,
        queue: Any,
        pool: Pool | None = None,
        max_size: int | None = None,
        validator_class: type[SmtpValidators] | None = None,
        auth: bool | list[str] = False,
        context: ssl.SSLContext | None = None,
        tls_immediately: bool = False,
        command_timeout: float | None = None,
        data_timeout: float | None = None,
        hostname: str | None = None,
        session_class: type[SmtpSession] | None = None,
    ) -> None:
        super().__init__(listener, queue, pool, hostname)
        self.max_size = max_size
        self.validator_class = validator_class
        self.auth = auth
        self.context = context
        self.tls_immediately = tls_immediately
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.session_class = session_class or SmtpSession

    def handle(self, socket: Any, address: Any) -> None:
        """Serve one SMTP connection to its end; errors are logged, not raised."""
        session = self.session_class(address, self.validator_class, self.handoff)
        session.hostname = self.hostname
        server = Server(
            socket,
            session,
            address=address,
            auth=self.auth,
            context=self.context,
            tls_immediately=self.tls_immediately,
            command_timeout=self.command_timeout,
            data_timeout=self.data_timeout,
        )
        server.hostname = self.hostname
        # SmtpSession keeps RFC 3461 requests with the envelope; the queue and
        # the bounces honour them.
        server.extensions.add("DSN")
        if self.max_size:
            server.extensions.add("SIZE", self.max_size)
        try:
            server.handle()
        except ConnectionLost:
            pass
        except Exception:  # noqa: BLE001 - one broken session must not stop the server
            slimta_logging.log_exception(__name__, address=address)
        finally:
            server.io.close()
