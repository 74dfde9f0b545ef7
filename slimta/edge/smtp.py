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

Hardening (5.0): every :class:`SmtpEdge` enforces per-client limits
(:class:`slimta.edge.limits.ClientLimits`: connections in total, per IP and
per network, connection, message, recipient and AUTH-failure rates), caps
each session's lifetime, asks message data to arrive at a minimum rate,
refuses early talkers, and *parks* idle sessions: a session waiting for its
next command holds no greenlet, only its state and two event-loop watchers,
so that tens of thousands of idle connections fit in a few KiB each.  The
edge's pool, if given, then bounds the sessions busy with a command, not
the open connections (``ClientLimits.max_connections`` does that, with a
``421 4.7.0 Too many connections``) when ``park_idle=True`` is asked for;
by default an edge with a pool runs each session in one pool greenlet.  :class:`RelayRestrictions` closes the
open relay.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
import unicodedata
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar

import gevent

from slimta import logging as slimta_logging
from slimta.bounce.dsn import DsnError, parse_mail_params, parse_rcpt_params, set_dsn, set_recipient_dsn
from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.policy.requiretls import accept_requiretls, set_requiretls
from slimta.smtp import ConnectionLost, MessageTooBig, SmtpError
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server
from slimta.util.ptrlookup import PtrLookup

from . import EdgeServer
from .limits import ClientLimits, Limiter

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from gevent.pool import Pool

__all__ = ["DEFAULT_SESSION_TIMEOUT", "RelayRestrictions", "SmtpEdge", "SmtpSession", "SmtpValidators"]

#: Seconds an SMTP session may last in all, by default.
DEFAULT_SESSION_TIMEOUT = 3600.0
#: Octets per second message data must arrive at, by default (Postfix's
#: ``smtpd_min_data_rate``), after :attr:`Server.data_rate_grace` seconds.
DEFAULT_MIN_DATA_RATE = 500.0
#: The reply to a connection over :attr:`ClientLimits.max_connections`.
TOO_MANY_CONNECTIONS = Reply("421", "4.7.0 Too many connections")

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
            slimta_logging.log_exception(__name__)
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


class SmtpEdge(EdgeServer):
    """Receive mail over SMTP.

    Args:
        listener: ``(ip, port)`` or a listening socket.
        queue: the queue to hand messages to (its ``enqueue``).
        pool: optional :class:`gevent.pool.Pool` bounding concurrent
            sessions (see ``park_idle``).
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
        limits: the per-client limits; None for the defaults of
            :class:`~slimta.edge.limits.ClientLimits`,
            ``ClientLimits.off()`` for none.
        park_idle: park sessions idle between commands (no greenlet per
            idle connection); False runs each session in one greenlet.
            None (the default) parks only without a pool: a pool then
            bounds whole sessions, as in 4.0.  With a pool and True, the
            pool bounds only sessions busy with a command.
        session_timeout: seconds a whole session may last (None: no cap).
        min_data_rate: octets per second message data must arrive at after
            a 10 s grace period (None: no minimum).
        greet_pause: seconds to wait for early talkers before the banner.

    .. versionchanged:: 0.1.0
       ``limits``, ``park_idle``, ``session_timeout``, ``min_data_rate``
       and ``greet_pause``.
    """

    #: The :class:`~slimta.smtp.server.Server` class built for each session
    #: (see :meth:`build_server`); a subclass may use its own.
    server_class: type[Server] = Server

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
        *,
        limits: ClientLimits | None = None,
        park_idle: bool | None = None,
        session_timeout: float | None = DEFAULT_SESSION_TIMEOUT,
        min_data_rate: float | None = DEFAULT_MIN_DATA_RATE,
        greet_pause: float = 0.0,
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
        self.limits = limits if limits is not None else ClientLimits()
        #: Counts connections and rates against :attr:`limits`.
        self.limiter = Limiter(self.limits)
        #: Whether idle sessions are parked (see the ``park_idle`` argument).
        self.park_idle = park_idle if park_idle is not None else pool is None
        self.session_timeout = session_timeout
        self.min_data_rate = min_data_rate
        #: Seconds of message data before ``min_data_rate`` applies.
        self.data_rate_grace = 10.0
        self.greet_pause = greet_pause
        #: Answer clients that send before the banner ``554 5.5.0`` and
        #: close (not behind a PROXY protocol mixin).
        self.reject_early_talkers = True
        #: Parked sessions (server -> watcher handle), for :meth:`kill`.
        self._parked: dict[Server, Any] = {}
        # The socket whose session parked inside handle(): its greenlet must
        # not close it (set and read with no switch in between).
        self._parking: Any = None

    # -- accepting and scheduling ----------------------------------------------------

    def _take_over(self, socket: Any, address: Any) -> bool:
        # Runs in the event loop: refuse at once, without a greenlet, when
        # the total cap is reached; never let a full pool stop accepting.
        limiter = self.limiter
        if limiter.full():
            _refuse_now(socket, TOO_MANY_CONNECTIONS)
            return True
        limiter.open()
        self._spawn(False, self._serve, socket, address)
        return True

    def _spawn(self, raw: bool, func: Callable[..., None], *args: Any) -> None:
        pool = self._pool
        if pool is None:
            if raw:
                gevent.spawn_raw(func, *args)
            else:
                gevent.spawn(func, *args)
        elif not pool.full():
            pool.spawn(func, *args)
        else:
            # Wait for room in a greenlet of its own: the event loop must
            # not block.
            gevent.spawn_raw(pool.spawn, func, *args)

    def _serve(self, socket: Any, address: Any) -> None:
        try:
            self.handle(socket, address)
        finally:
            if self._parking is socket:
                self._parking = None
            else:
                socket.close()
                self.limiter.close()

    def _wake(self, server: Server, timed_out: bool) -> None:
        self._parked.pop(server, None)
        self._spawn(True, self._resume, server, timed_out)

    def _resume(self, server: Server, timed_out: bool) -> None:
        if not self._drive(server, timed_out=timed_out):
            self.limiter.release(server.address)
            self.limiter.close()

    # -- one session -------------------------------------------------------------------

    def handle(self, socket: Any, address: Any) -> None:
        """Serve one SMTP connection; errors are logged, not raised.

        With :attr:`park_idle` this returns as soon as the session is idle;
        the session continues from the event loop when the client sends.
        """
        refusal = self.limiter.admit(address)
        if refusal is not None:
            _log.info("client %s refused: %s", address, refusal.message)
            _send_quietly(socket, refusal)
            return
        server = self.build_server(socket, address)
        self.session_started(server)
        if self._drive(server, start=True):
            self._parking = socket
        else:
            self.limiter.release(address)

    def session_started(self, server: Server) -> None:
        """Called when a session's :class:`Server` is built, before its banner.

        Subclasses may track sessions (e.g. for metrics or a graceful
        shutdown); each call is matched by one :meth:`session_ended`.

        .. versionadded:: 0.1.0
        """

    def session_ended(self, server: Server) -> None:
        """Called once a session is over and its socket closed.

        .. versionadded:: 0.1.0
        """

    def close_parked(self, reply: Reply) -> int:
        """Send ``reply`` (e.g. a ``421``) to every parked session and close it.

        Parked sessions wait for their client with no greenlet, so a graceful
        shutdown reaches them here.  Returns how many were closed.

        .. versionadded:: 0.1.0
        """
        parked, self._parked = self._parked, {}
        for server, handle in parked.items():
            handle.cancel()
            _send_quietly(server.io.socket, reply)
            self._end_parked(server)
        return len(parked)

    def _end_parked(self, server: Server) -> None:
        with suppress(Exception):
            server.finish()
        server.io.close()
        self.limiter.release(server.address)
        self.limiter.close()
        self.session_ended(server)

    def build_server(self, socket: Any, address: Any) -> Server:
        """The :class:`Server` for one connection, with this edge's settings.

        .. versionadded:: 0.1.0
        """
        session = self.session_class(address, self.validator_class, self.handoff)
        session.hostname = self.hostname
        session.limiter = self.limiter
        server = self.server_class(
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
        # SmtpSession keeps REQUIRETLS with the envelope; the SMTP relay
        # honours it.
        server.offer_requiretls = True
        if self.max_size:
            server.extensions.add("SIZE", self.max_size)
        server.session_timeout = self.session_timeout
        server.min_data_rate = self.min_data_rate
        server.data_rate_grace = self.data_rate_grace
        server.greet_pause = self.greet_pause
        # Behind a PROXY protocol header the proxy may forward what the
        # client pipelined with it; the check belongs to the proxy then.
        server.reject_early_talkers = self.reject_early_talkers and not hasattr(self, "proxyproto_timeout")
        if self.auth and self.limits.auth_failures_per_hour is not None:
            server.auth_gate = functools.partial(self.limiter.auth_blocked, address)
        return server

    def _drive(self, server: Server, *, start: bool = False, timed_out: bool = False) -> bool:
        """Run ``server`` until it parks (True) or ends (False, closed)."""
        started = not start
        try:
            if start:
                started = server.start()
                if not started:
                    return False
                parked = server.run(park=self.park_idle)
            else:
                parked = server.resume(timed_out)
            if parked:
                self._parked[server] = server.park(self._wake)
                return True
        except ConnectionLost:
            pass
        except Exception:  # noqa: BLE001 - one broken session must not stop the server
            slimta_logging.log_exception(__name__, address=server.address)
        finally:
            if server not in self._parked:
                with suppress(Exception):
                    if started:
                        server.finish()
                server.io.close()
                self.session_ended(server)
        return False

    def kill(self, *args: Any, **kwargs: Any) -> None:
        """Stop accepting, close the parked sessions and stop the greenlet."""
        parked, self._parked = self._parked, {}
        for server, handle in parked.items():
            handle.cancel()
            self._end_parked(server)
        super().kill(*args, **kwargs)


def _send_quietly(socket: Any, reply: Reply) -> None:
    with suppress(OSError):
        socket.sendall(reply.to_bytes())


def _refuse_now(socket: Any, reply: Reply) -> None:
    """Answer and close from the event loop: one non-blocking send, never a wait."""
    with suppress(OSError):
        socket.settimeout(0)
        socket.send(reply.to_bytes())
    socket.close()


# -- open-relay safety ------------------------------------------------------------


class RelayRestrictions(SmtpValidators):
    """Refuse relaying: unauthenticated clients may only send to local domains.

    Use it as a base (or mixin, first) of your validators and list the
    domains this MTA receives mail for::

        class MyValidators(RelayRestrictions):
            local_domains = ("example.com", "example.net")

    Recipients of other domains are refused ``554 5.7.1 Relay access
    denied`` unless the client authenticated or connects from
    :attr:`trusted_networks`.  Whoever the client, the address forms used to
    trick MTAs into relaying are refused ``550 5.7.1``: the percent hack
    (``user%other@local``), bang paths (``host!user@local``), quoted local
    parts hiding an ``@``, domain literals (``user@[192.0.2.1]``), trailing
    dots and domains mixing scripts (IDN look-alikes).  A source route
    (``<@a:b@c>``) is dropped by the protocol core (RFC 5321 4.1.1.3), so the
    real destination ``b@c`` is the one checked.

    .. versionadded:: 0.1.0
    """

    #: Domains delivered here (compared case-insensitively, IDNA-aware).
    local_domains: ClassVar[tuple[str, ...]] = ()
    #: Networks (CIDR) whose clients may relay without authenticating.
    trusted_networks: ClassVar[tuple[str, ...]] = ()

    def handle_rcpt(self, reply: Any, recipient: str, params: dict[str, Any]) -> None:
        """Refuse relaying and relay tricks, then run the next ``handle_rcpt``."""
        refusal = self.relay_refusal(recipient)
        if refusal is not None:
            reply.copy(refusal)
            return
        parent = getattr(super(), "handle_rcpt", None)
        if parent is not None:
            parent(reply, recipient, params)

    def relay_refusal(self, recipient: str) -> Reply | None:
        """The reply refusing ``recipient``, or None to accept it."""
        local, at, domain = recipient.rpartition("@")
        if not at:
            # RFC 5321 4.5.1: "postmaster" with no domain is always local.
            if recipient.lower() == "postmaster":
                return None
            return Reply("550", "5.1.3 Recipient address lacks a domain")
        trick = _relay_trick(local, domain)
        if trick is not None:
            return Reply("550", f"5.7.1 Address form not accepted ({trick})")
        if _canonical_domain(domain) in self._local_set():
            return None
        if self.session.auth is not None or self._trusted():
            return None
        return Reply("554", "5.7.1 Relay access denied")

    def _local_set(self) -> frozenset[str]:
        return _local_domains(tuple(type(self).local_domains))

    def _trusted(self) -> bool:
        address = self.session.address
        host = address[0] if isinstance(address, tuple) and address else None
        if not isinstance(host, str) or not self.trusted_networks:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(net, strict=False) for net in self.trusted_networks)


def _relay_trick(local: str, domain: str) -> str | None:
    if local.startswith('"') or "@" in local:
        return "quoted local part"
    if "%" in local:
        return "percent hack"
    if "!" in local:
        return "bang path"
    if ":" in local or ":" in domain:
        return "source route"
    if domain.startswith("["):
        return "domain literal"
    if domain.endswith(".") or ".." in domain or not domain:
        return "malformed domain"
    if not domain.isascii() and _mixed_scripts(domain):
        return "mixed scripts in domain"
    return None


def _mixed_scripts(domain: str) -> bool:
    """True if a label mixes letters of several scripts (IDN look-alikes)."""
    for label in domain.split("."):
        scripts = {unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0] for ch in label if ch.isalpha()}
        if len(scripts) > 1:
            return True
    return False


def _canonical_domain(domain: str) -> str:
    domain = unicodedata.normalize("NFC", domain).lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


@functools.lru_cache(maxsize=64)
def _local_domains(domains: tuple[str, ...]) -> frozenset[str]:
    return frozenset(_canonical_domain(d) for d in domains)
