"""The per-connection side of the SMTP edge: the session and its hooks.

:class:`SmtpSession` is the handlers object a :class:`slimta.smtp.server.Server`
calls for every command (the 4.0 ``EHLO``/``MAIL``/``RCPT``/``HAVE_DATA``
methods): it keeps the session's state, builds the
:class:`~slimta.envelope.Envelope` and calls the user's
:class:`SmtpValidators` hooks.  It lives apart from
:class:`~slimta.edge.smtp.SmtpEdge` (which accepts, schedules and parks
sessions) because the two change for different reasons: this module is the
SMTP semantics of one session, that one is connection management.
:mod:`slimta.edge.smtp` re-exports both classes and is their public home:
import them from there.  This code is on the hot path (a call per command),
so it was moved here as is, with no wrappers in between.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from slimta import logging as slimta_logging
from slimta.bounce.dsn import DsnError, parse_mail_params, parse_rcpt_params, set_dsn, set_recipient_dsn
from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.policy.requiretls import accept_requiretls, set_requiretls
from slimta.smtp import MessageTooBig, SmtpError
from slimta.util.ptrlookup import PtrLookup

if TYPE_CHECKING:
    from collections.abc import Callable

    from .limits import Limiter

__all__ = ["SmtpSession", "SmtpValidators"]

# Unhandled errors are logged under the public module's name, as before the
# session moved here.
_LOGGER = "slimta.edge.smtp"


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
    #: The edge's :class:`~slimta.edge.limits.Limiter` (set by SmtpEdge), for
    #: message, recipient and AUTH-failure rates.
    limiter: Limiter | None = None
    #: Look up the client's PTR name when it connects (with
    #: :class:`slimta.util.ptrlookup.PtrLookup`, through the default
    #: :class:`~slimta.util.dns.DNSResolver`), for :attr:`reverse_address` and
    #: ``envelope.client['host']``.  Off by default, unlike python-slimta:
    #: a query per connection is a cost and a dependency on DNS that a
    #: deployment should choose (set it on a subclass, or on this class).
    #:
    #: .. versionadded:: 0.1.0
    reverse_lookup = False

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
        #: The client's PTR name, when a lookup has filled it in (see
        #: :attr:`reverse_lookup`).
        self.reverse_address: str | None = None
        self._ptr_lookup: Any = None
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
        if self.reverse_lookup and self.address:
            self._start_reverse_lookup(str(self.address[0]))
        self._call_validator("banner", reply, self.address)

    def _start_reverse_lookup(self, ip: str) -> None:
        try:
            lookup = PtrLookup(ip)
        except (ValueError, SlimtaError):
            return  # not an IP address (e.g. a unix socket peer)
        lookup.link_value(self._reverse_found)
        lookup.start()
        self._ptr_lookup = lookup

    def _reverse_found(self, lookup: Any) -> None:
        if isinstance(lookup.value, str):
            self.reverse_address = lookup.value

    def CLOSE(self) -> None:
        if self._ptr_lookup is not None:
            self._ptr_lookup.kill(block=False)

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
        elif self.limiter is not None:
            self.limiter.auth_failed(self.address)

    def RSET(self, reply: Any) -> None:
        self._call_validator("rset", reply)
        self.envelope = None

    def MAIL(self, reply: Any, address: str, params: dict[str, Any]) -> None:
        dsn = None
        requiretls = None
        if params:  # most clients send none: skip the parameter work
            try:
                dsn = parse_mail_params(_selected_params(params, ("RET", "ENVID")))
            except DsnError as exc:
                reply.code = "501"
                reply.message = f"5.5.4 {exc}"
                return
            requiretls = accept_requiretls(
                _selected_params(params, ("REQUIRETLS",)), encrypted=self.security == "TLS"
            )
            if isinstance(requiretls, tuple):
                reply.code, reply.message = requiretls
                return
        if self._over_rate(reply, "message"):
            return
        self._call_validator("mail", reply, address, params)
        if reply.code == "250":
            self.envelope = Envelope(sender=address)
            if dsn is not None and (dsn.ret is not None or dsn.envid is not None):
                set_dsn(self.envelope, dsn)
            if requiretls is True:
                set_requiretls(self.envelope)

    def RCPT(self, reply: Any, address: str, params: dict[str, Any]) -> None:
        rcpt_dsn = None
        if params:
            try:
                rcpt_dsn = parse_rcpt_params(_selected_params(params, ("NOTIFY", "ORCPT")))
            except DsnError as exc:
                reply.code = "501"
                reply.message = f"5.5.4 {exc}"
                return
        if self._over_rate(reply, "recipient"):
            return
        self._call_validator("rcpt", reply, address, params)
        if reply.code == "250" and self.envelope is not None:
            self.envelope.recipients.append(address)
            if rcpt_dsn is not None:
                set_recipient_dsn(self.envelope, address, rcpt_dsn)

    def _over_rate(self, reply: Any, what: str) -> bool:
        limiter = self.limiter
        if limiter is None:
            return False
        user = self.auth[0] if self.auth else None
        check = limiter.check_message if what == "message" else limiter.check_recipient
        refusal = check(self.address, user)
        if refusal is None:
            return False
        reply.copy(refusal)
        return True

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
            slimta_logging.log_exception(_LOGGER)
            reply.code = "554"
            reply.message = "5.6.0 Message could not be parsed"
            return
        hops = envelope.count_headers("Received")
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
        queued = f" (queued as {ids})" if ids else ""
        reply.message = f"2.6.0 Message accepted for delivery{queued}"


def _selected_params(params: dict[str, Any], keys: tuple[str, ...]) -> dict[str, str | None]:
    """The ``keys`` among ``params``, a bare keyword as None (the core gives True)."""
    return {key: (None if value is True else value) for key, value in params.items() if key in keys}
