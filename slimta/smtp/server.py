"""An SMTP server session on a connected socket, calling the 4.0 handler hooks.

Theory of operation: :class:`Server` is a thin driver.  The protocol core
(:class:`slimta.smtp.protocol.ServerConnection`) parses, checks and frames
everything; the driver moves bytes between it and the socket, and for each
well-formed command builds the default :class:`~slimta.smtp.reply.Reply`,
lets the user's *handlers* object change it (the upper-case methods of
python-slimta 4.0: ``EHLO(reply, ehlo_as)``, ``MAIL(reply, address, params)``,
...), and hands the reply back to the core.  Replies are written only when
the core needs more input, so a pipelined group of commands is answered in a
single write (RFC 2920).

Timeouts: each command must arrive whole within ``command_timeout`` of the
previous one being answered (a client trickling a line one octet at a time
does not reset it), the TLS handshake and AUTH exchanges included.  A
message's data must arrive within ``data_timeout`` and, after
:attr:`Server.data_rate_grace` seconds, at :attr:`Server.min_data_rate`
octets per second or better.  :attr:`Server.session_timeout` caps the whole
session.  A timeout answers ``421 4.4.2`` and ends the session.

Early talkers: a client that sends before the banner (RFC 5321 4.3.1 says it
must wait for it) is answered ``554 5.5.0`` and disconnected.  The check
costs nothing by default (input already queued when the session starts);
:attr:`Server.greet_pause` makes the server wait that long for such input
before its banner, as Postfix's postscreen does.

Parking: :meth:`Server.handle` runs the whole session in the calling
greenlet.  An edge may instead call :meth:`Server.start` and
:meth:`Server.run` with ``park=True``: when the session waits for a command
with nothing to do, :meth:`Server.run` returns True and the caller may let
its greenlet end after :meth:`Server.park`, which watches the socket and the
deadline from the event loop and calls back when there is work again.  The
sans-IO core keeps the whole session state, so an idle session costs no
greenlet and no stack.

Where things live: this module keeps :class:`Server`'s public methods, the
session loop and the hook call for each command.  Two private mixins, which
:class:`Server` inherits so that no call layer is added, hold the rest:
:mod:`slimta.smtp._reading` (deadlines, read timers, the wait before
parking) and :mod:`slimta.smtp._tls_auth` (the STARTTLS handshake and the
AUTH exchange).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Timeout

from slimta.smtp import ConnectionLost, MessageTooBig, SmtpError
from slimta.smtp._reading import _Parked, _Reading, _ReadTimer
from slimta.smtp._tls_auth import _TlsAuth
from slimta.smtp.auth import SERVER_MECHANISMS, ServerMechanism
from slimta.smtp.extensions import Extensions
from slimta.smtp.io import IO
from slimta.smtp.protocol import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    Ehlo,
    Greeting,
    Helo,
    InputMode,
    MailFrom,
    MessageReceived,
    Noop,
    Quit,
    RcptTo,
    Rset,
    ServerConnection,
    SmtpLimits,
    StartTls,
    UnknownCommand,
)
from slimta.smtp.reply import UNHANDLED_ERROR, UNKNOWN_COMMAND, Reply

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

__all__ = ["DEFAULT_COMMAND_TIMEOUT", "DEFAULT_DATA_TIMEOUT", "EARLY_TALKER", "Server"]

#: Seconds to wait for a command when ``command_timeout`` is None (RFC 5321
#: 4.5.3.2.7 asks servers to wait at least 5 minutes).
DEFAULT_COMMAND_TIMEOUT = 300.0
#: Seconds for the whole of a message's data when ``data_timeout`` is None.
DEFAULT_DATA_TIMEOUT = 600.0

#: The reply to a client that sent before the banner (RFC 5321 4.3.1).
EARLY_TALKER = Reply("554", "5.5.0 Protocol error: data sent before the greeting")

# Verbs a client could send that must never reach a handler method of the
# same name: they are the driver's own hooks, not SMTP commands.
_RESERVED_HOOKS = frozenset(
    {"BANNER_", "TLSHANDSHAKE", "TLSHANDSHAKE2", "HAVE_DATA", "CLOSE", "AUTH", "STARTTLS"}
)

_log = logging.getLogger(__name__)


class Server(_TlsAuth, _Reading):
    """Run one SMTP server session over a connected socket.

    Args:
        socket: the connected (gevent) socket.
        handlers: an object whose upper-case methods, if present, are called
            to adjust each reply: ``BANNER_(reply)``, ``EHLO(reply, ehlo_as)``,
            ``HELO(reply, helo_as)``, ``STARTTLS(reply, extensions)``,
            ``TLSHANDSHAKE()``, ``TLSHANDSHAKE2(ssl_socket)``,
            ``AUTH(reply, creds)``, ``MAIL(reply, address, params)``,
            ``RCPT(reply, address, params)``, ``DATA(reply)``,
            ``HAVE_DATA(reply, data, err)``, ``RSET(reply)``, ``NOOP(reply)``,
            ``QUIT(reply)``, ``CLOSE()`` and, for other verbs,
            ``VERB(reply, arg, server)``.  A reply code of 221 or 421 set by a
            handler closes the session.
        address: the client's address.
        auth: True to offer AUTH with the default mechanisms, or a list of
            mechanism names.  PLAIN and LOGIN are refused (538) until TLS.
            Without an ``AUTH`` handler every attempt fails.
        context: an :class:`ssl.SSLContext` (stdlib or gevent) to offer
            STARTTLS, or to encrypt at once with ``tls_immediately``.
        tls_immediately: start TLS before the banner (implicit TLS, port 465).
        command_timeout: seconds to wait for each command (default
            :data:`DEFAULT_COMMAND_TIMEOUT`).
        data_timeout: seconds for the whole of a message's data (default
            :data:`DEFAULT_DATA_TIMEOUT`).
    """

    def __init__(
        self,
        socket: Any,
        handlers: Any,
        address: Any = None,
        auth: bool | list[str] = False,
        context: ssl.SSLContext | None = None,
        tls_immediately: bool = False,
        command_timeout: float | None = None,
        data_timeout: float | None = None,
    ) -> None:
        self.handlers = handlers
        self.address = address
        self.io = IO(socket, address)
        self.context = context
        self.tls_immediately = tls_immediately
        self.command_timeout = DEFAULT_COMMAND_TIMEOUT if command_timeout is None else command_timeout
        self.data_timeout = DEFAULT_DATA_TIMEOUT if data_timeout is None else data_timeout
        #: Session limits; replace before :meth:`handle` to change them.
        self.limits = SmtpLimits()
        #: Name used in the CRAM-MD5 challenge.
        self.hostname = "localhost"
        self.extensions = Extensions()
        for ext in ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"):
            self.extensions.add(ext)
        if context is not None and not tls_immediately:
            self.extensions.add("STARTTLS")
        self.auth_mechanisms: tuple[str, ...] = ()
        if auth:
            names = SERVER_MECHANISMS if auth is True else tuple(m.upper() for m in auth)
            self.auth_mechanisms = names
            self.extensions.add("AUTH", " ".join(names))
        self.conn: ServerConnection | None = None
        # When the data of the current message must be complete (monotonic).
        self._data_deadline: float | None = None
        self._auth_mechanism: ServerMechanism | None = None
        #: Seconds the whole session may last (None: no cap).
        #:
        #: .. versionadded:: 0.1.0
        self.session_timeout: float | None = None
        #: Octets per second a message's data must arrive at, once
        #: :attr:`data_rate_grace` seconds have passed (None: no minimum).
        #:
        #: .. versionadded:: 0.1.0
        self.min_data_rate: float | None = None
        #: Seconds of message data before :attr:`min_data_rate` applies.
        self.data_rate_grace = 10.0
        #: Seconds to wait, before the banner, for a client that talks too
        #: early (0: only check what is already queued).
        #:
        #: .. versionadded:: 0.1.0
        self.greet_pause = 0.0
        #: With parking (:meth:`run` with ``park=True``), seconds an idle
        #: session keeps its greenlet before it parks.
        #:
        #: .. versionadded:: 0.1.0
        self.park_after = 0.05
        self._park_timer: _ReadTimer | None = None
        #: Offer REQUIRETLS (RFC 8689) once the session is encrypted; the
        #: handlers must keep the MAIL parameter with the message.
        #:
        #: .. versionadded:: 0.1.0
        self.offer_requiretls = False
        #: Refuse clients that send before the banner with ``554 5.5.0``.
        self.reject_early_talkers = True
        #: Called before each AUTH exchange; a reply it returns refuses the
        #: attempt (per-client AUTH failure limits).
        self.auth_gate: Callable[[], Reply | None] | None = None
        self._hangup = False
        self._started = 0.0
        # The command deadline and the number of events answered when it
        # was set: it is renewed only once a command has been answered.
        self._command_deadline = 0.0
        self._deadline_events = -1
        self._events = 0
        self._data_started = 0.0
        self._data_octets = 0

    @property
    def encrypted(self) -> bool:
        """True once the session runs over TLS."""
        return self.io.encrypted

    # -- the session loop --------------------------------------------------------

    def handle(self) -> None:
        """Run the session until QUIT, a closing reply, a timeout or EOF.

        Raises:
            ConnectionLost: the connection broke or timed out.
            Exception: whatever a handler raised (after ``421 4.3.0`` was sent).
        """
        if not self.start():
            return
        try:
            self.run()
        finally:
            self.finish()

    def start(self) -> bool:
        """Prepare the session (implicit TLS first); False if it cannot start.

        .. versionadded:: 0.1.0
        """
        self._started = time.monotonic()
        self._command_timer = _ReadTimer(self.command_timeout)
        self.io.send_timeout = self.command_timeout
        if self.context is not None and self.tls_immediately and not self._encrypt():
            self._command_timer.close()
            return False
        size = self.extensions.getparam("SIZE", filter=int)
        if "SIZE" in self.extensions and size is not None and size > 0:
            self.limits = _with_size(self.limits, size)
        elif self.limits.max_message_size is not None:
            self.extensions.add("SIZE", self.limits.max_message_size)
        self.conn = ServerConnection(
            self.extensions, self.limits, encrypted=self.encrypted, auth_mechanisms=self.auth_mechanisms
        )
        return True

    def run(self, *, park: bool = False) -> bool:
        """Serve the session; True if it stopped to park, False once it ended.

        With ``park`` the loop returns instead of waiting for the next
        command whenever the session is idle between commands (see
        :meth:`park`).

        Raises:
            ConnectionLost: the connection broke or timed out.
            Exception: whatever a handler raised (after ``421 4.3.0`` was sent).

        .. versionadded:: 0.1.0
        """
        assert self.conn is not None
        return self._loop(self.conn, park)

    def finish(self) -> None:
        """Release the session's timers and call the ``CLOSE`` hook.

        .. versionadded:: 0.1.0
        """
        self._command_timer.close()
        if self._park_timer is not None:
            self._park_timer.close()
        self._call("CLOSE")

    def _loop(self, conn: ServerConnection, park: bool = False) -> bool:
        dispatch = _DISPATCH
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                self.io.send(conn.data_to_send())
                if park and conn.mode is InputMode.COMMAND and self._parkable():
                    data = self._recv_before_parking(conn)
                    if data is None:
                        return True
                    conn.receive_data(data)
                    continue
                conn.receive_data(self._recv(conn))
                continue
            if isinstance(event, ConnectionClosed):
                self.io.send(conn.data_to_send())
                return False
            self._events += 1
            try:
                dispatch[type(event)](self, event)
            except (ConnectionLost, Timeout):
                raise
            except Exception:
                # The core still waits for an answer: send the 4.0 "unhandled
                # error" reply, which closes the session, then let the caller
                # log the exception once.
                self._send_canned(UNHANDLED_ERROR)
                self.io.send(conn.data_to_send())
                raise
            if conn.closed or self._hangup:
                self.io.send(conn.data_to_send())
                return False
            if not isinstance(event, Bdat) or event.last:
                # The data deadline (see _recv) spans one message: DATA's
                # content, or every BDAT chunk up to LAST.
                self._data_deadline = None

    # -- parking ---------------------------------------------------------------

    def park(self, wake: Callable[[Server, bool], None]) -> Any:
        """Wait for input (or the deadline) from the event loop, not a greenlet.

        ``wake(server, timed_out)`` is called from the event loop (it must
        not block: it should spawn a greenlet that calls :meth:`resume`).

        Returns:
            A handle whose ``cancel()`` stops watching without waking.

        .. versionadded:: 0.1.0
        """
        assert self.conn is not None
        remaining, fresh = self._read_timeout(self.conn)
        loop = gevent.get_hub().loop
        watcher = loop.io(self.io.socket.fileno(), 1)
        parked: _Parked
        if fresh:
            # libev resumes a stopped timer with its remaining time; "again"
            # restarts it from its full period.
            timer = self._command_timer.timer
            parked = _Parked(self, watcher, timer, wake)
            timer.again(parked.fire, True, update=True)
        else:
            timer = loop.timer(max(remaining, 0.0))
            parked = _Parked(self, watcher, timer, wake)
            timer.start(parked.fire, True, update=True)
        watcher.start(parked.fire, False)
        return parked

    def resume(self, timed_out: bool) -> bool:
        """Continue a parked session; True if it parked again, False once it ended.

        Raises:
            ConnectionLost: the connection broke or timed out.

        .. versionadded:: 0.1.0
        """
        conn = self.conn
        assert conn is not None
        if timed_out:
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client")
        conn.receive_data(self._recv(conn))
        return self._loop(conn, True)

    # -- helpers ------------------------------------------------------------------

    def _call(self, which: str, *args: Any) -> Any:
        method = getattr(self.handlers, which, None)
        if method is None:
            return None
        return method(*args)

    def _reply(self, reply: Reply) -> None:
        assert self.conn is not None
        self.conn.send_reply(reply)

    def _send_canned(self, canned: Reply) -> None:
        self._reply(Reply().copy(canned))

    # -- one method per event -------------------------------------------------------

    def _on_greeting(self, event: Greeting) -> None:
        if self.reject_early_talkers and self._check_early_talker():
            _log.info("early talker %s refused", self.address)
            self._hangup = True
            self._send_canned(EARLY_TALKER)
            return
        # Fix: RFC 5321 4.2 greeting grammar puts our domain first
        # ("220 " Domain [SP text]); so do the EHLO/HELO replies (4.1.1.1).
        reply = Reply("220", f"{self.hostname} ESMTP server ready")
        reply.enhanced_status_code = False
        self._call("BANNER_", reply)
        self._reply(reply)

    def _on_ehlo(self, event: Ehlo) -> None:
        reply = Reply("250", f"{self.hostname} Hello {event.hostname}")
        reply.enhanced_status_code = False
        self._call("EHLO", reply, event.hostname)
        if reply.code == "250":
            reply.message = self.extensions.build_string(reply.message or "Hello")
        self._reply(reply)

    def _on_helo(self, event: Helo) -> None:
        reply = Reply("250", f"{self.hostname} Hello {event.hostname}")
        reply.enhanced_status_code = False
        self._call("HELO", reply, event.hostname)
        self._reply(reply)

    def _on_mail(self, event: MailFrom) -> None:
        reply = Reply("250", f"2.1.0 Sender <{event.address}> Ok")
        self._call("MAIL", reply, event.address, event.params)
        self._reply(reply)

    def _on_rcpt(self, event: RcptTo) -> None:
        reply = Reply("250", f"2.1.5 Recipient <{event.address}> Ok")
        self._call("RCPT", reply, event.address, event.params)
        self._reply(reply)

    def _on_data(self, event: Data) -> None:
        reply = Reply("354", "Start mail input; end with <CRLF>.<CRLF>")
        self._call("DATA", reply)
        self._reply(reply)

    def _on_bdat(self, event: Bdat) -> None:
        if event.first:
            check = Reply("354", "Start mail input")
            self._call("DATA", check)
            if check.code != "354":
                self._reply(check)
                return
        if not event.last:
            self._reply(Reply("250", f"2.0.0 {event.size} octets received"))
            return
        self._have_data(event.data, event.error)

    def _on_message(self, event: MessageReceived) -> None:
        self._have_data(event.data, event.error)

    def _have_data(self, data: bytes | None, error: Reply | None) -> None:
        reply = Reply("250", "2.6.0 Message accepted for delivery")
        err: SmtpError | None = None
        if error is not None:
            reply.copy(error)
            err = MessageTooBig() if error.code == "552" else SmtpError(error.message or "Message refused")
        self._call("HAVE_DATA", reply, data, err)
        self._reply(reply)

    def _on_rset(self, event: Rset) -> None:
        reply = Reply("250", "2.0.0 Ok")
        self._call("RSET", reply)
        self._reply(reply)

    def _on_noop(self, event: Noop) -> None:
        reply = Reply("250", "2.0.0 Ok")
        self._call("NOOP", reply)
        self._reply(reply)

    def _on_quit(self, event: Quit) -> None:
        reply = Reply("221", "2.0.0 Bye")
        self._call("QUIT", reply)
        self._reply(reply)

    def _on_unknown(self, event: UnknownCommand) -> None:
        reply = Reply().copy(UNKNOWN_COMMAND)
        if event.verb not in _RESERVED_HOOKS and event.verb.isalpha():
            self._call(event.verb, reply, event.arg, self)
        self._reply(reply)


# One table for every session (a per-session dict of bound methods cost
# about 2 KiB of memory per idle connection).
_DISPATCH: dict[type, Callable[[Server, Any], None]] = {
    Greeting: Server._on_greeting,
    Ehlo: Server._on_ehlo,
    Helo: Server._on_helo,
    StartTls: Server._on_starttls,
    Auth: Server._on_auth,
    AuthResponse: Server._on_auth_response,
    MailFrom: Server._on_mail,
    RcptTo: Server._on_rcpt,
    Data: Server._on_data,
    Bdat: Server._on_bdat,
    MessageReceived: Server._on_message,
    Rset: Server._on_rset,
    Noop: Server._on_noop,
    Quit: Server._on_quit,
    UnknownCommand: Server._on_unknown,
}


def _with_size(limits: SmtpLimits, size: int) -> SmtpLimits:
    return dataclasses.replace(limits, max_message_size=size)
