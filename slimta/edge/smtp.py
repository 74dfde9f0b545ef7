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

Where the code lives: this module keeps :class:`SmtpEdge` (accepting,
scheduling, parking and ending connections).  :class:`SmtpSession` and
:class:`SmtpValidators`, the SMTP semantics of one session, live in
``slimta.edge._smtpsession``; :class:`RelayRestrictions`, a policy, in
``slimta.edge._relayrestrictions``.  All are re-exported here and public
only under this module's name.
"""

from __future__ import annotations

import functools
import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import gevent

from slimta import logging as slimta_logging
from slimta.smtp import ConnectionLost
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server

from . import EdgeServer
from ._relayrestrictions import RelayRestrictions
from ._smtpsession import SmtpSession, SmtpValidators
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
