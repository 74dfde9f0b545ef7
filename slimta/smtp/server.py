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
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket as _socket
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.socket
from gevent import Timeout

from slimta.smtp import ConnectionLost, MessageTooBig, SmtpError
from slimta.smtp.auth import SERVER_MECHANISMS, Challenge, Failure, ServerMechanism, Success, server_mechanism
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
from slimta.smtp.reply import TIMED_OUT, UNHANDLED_ERROR, UNKNOWN_COMMAND, Reply

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


class Server:
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

    def _recv_before_parking(self, conn: ServerConnection) -> bytes | None:
        """Wait :attr:`park_after` seconds in the greenlet; None: park now.

        Parking costs a greenlet per wake-up, so only a session that stays
        idle for a while is parked: an active client's next command usually
        arrives within milliseconds.
        """
        if self.park_after <= 0:
            return None
        timeout, _ = self._read_timeout(conn)
        if timeout <= self.park_after:
            return self._recv(conn)
        timer = self._park_timer
        if timer is None:
            timer = self._park_timer = _ReadTimer(self.park_after)
        timer.arm()
        try:
            return self.io.recv()
        except _ReadTimedOut as exc:
            if exc is not timer.expired:
                raise
            # The reused exception would otherwise keep this greenlet's
            # frames alive, through its traceback, while the session parks.
            exc.__traceback__ = None
            return None
        except TimeoutError:
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        finally:
            timer.disarm()

    def _parkable(self) -> bool:
        # Decrypted TLS data may wait inside the SSL object with nothing
        # left to read on the socket: only an empty SSL buffer can park.
        return not self.io.encrypted or not self.io.socket.pending()

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

    # -- reading -----------------------------------------------------------------

    def _read_timeout(self, conn: ServerConnection) -> tuple[float, bool]:
        """Seconds left for the read about to start, and whether they are fresh.

        Fresh means a new, uncapped command deadline, served by the shared
        timer of the session.
        """
        now = time.monotonic()
        fresh = False
        if conn.in_data:
            # Fix: data_timeout bounds the whole of a message's data, as
            # documented, not each read: a client trickling one octet per
            # read used to keep the session alive for ever (slowloris).
            if self._data_deadline is None:
                self._data_deadline = now + self.data_timeout
                self._data_started = now
                self._data_octets = 0
            deadline = self._data_deadline
            rate = self.min_data_rate
            if rate:
                # Postfix's smtpd_min_data_rate: every octet received buys
                # 1/rate seconds more, after a grace period.
                earned = self._data_started + self.data_rate_grace + self._data_octets / rate
                deadline = min(deadline, earned)
        else:
            if self._deadline_events != self._events:
                # A command was answered since the deadline was set: the next
                # one gets a fresh command_timeout.  Partial lines do not
                # renew it (one octet every few seconds is a slowloris).
                self._deadline_events = self._events
                self._command_deadline = now + self.command_timeout
                fresh = True
            deadline = self._command_deadline
        if self.session_timeout is not None:
            end = self._started + self.session_timeout
            if end < deadline:
                deadline, fresh = end, False
        return (self.command_timeout if fresh else deadline - now), fresh

    def _check_early_talker(self) -> bool:
        """True if the client sent something before our banner."""
        sock = self.io.socket
        if self.greet_pause > 0:
            with contextlib.suppress(OSError):
                gevent.socket.wait_read(sock.fileno(), self.greet_pause)
        if self.encrypted:
            return bool(sock.pending())
        previous = sock.gettimeout()
        try:
            sock.settimeout(0)
            return bool(sock.recv(1, _socket.MSG_PEEK))
        except OSError:
            return False
        finally:
            sock.settimeout(previous)

    def _recv(self, conn: ServerConnection) -> bytes:
        timeout, fresh = self._read_timeout(conn)
        if timeout <= 0:
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client")
        # One re-armed timer serves every fresh command deadline of the
        # session (a new Timeout object per read was a measurable share of a
        # small message's CPU); other reads use their remaining time.
        timer = self._command_timer if fresh else _ReadTimer(timeout)
        timer.arm()
        try:
            data = self.io.recv()
        except _ReadTimedOut as exc:
            if exc is not timer.expired:
                raise
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        except TimeoutError:
            # A timeout the caller set on the socket itself.
            self._send_timeout()
            raise ConnectionLost("Timed out waiting for the client") from None
        finally:
            timer.disarm()
            if timer is not self._command_timer:
                timer.close()
        if conn.in_data:
            self._data_octets += len(data)
        return data

    def _send_timeout(self) -> None:
        with contextlib.suppress(ConnectionLost):
            self.io.send(TIMED_OUT.to_bytes())

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

    def _on_starttls(self, event: StartTls) -> None:
        assert self.conn is not None
        reply = Reply("220", "2.7.0 Go ahead")
        self._call("STARTTLS", reply, self.extensions)
        self._reply(reply)
        if reply.code != "220":
            return
        self.io.send(self.conn.data_to_send())
        if self.conn.discarded_plaintext:
            _log.warning(
                "discarded %d octets sent before the TLS handshake by %s",
                self.conn.discarded_plaintext,
                self.address,
            )
        if not self._encrypt():
            raise ConnectionLost("TLS handshake failed")
        self.conn.tls_established()
        self.extensions.drop("STARTTLS")

    def _encrypt(self) -> bool:
        assert self.context is not None
        try:
            with Timeout(self.command_timeout):
                ok = self.io.encrypt_socket_server(self.context)
        except Timeout:
            ok = False
        if ok:
            if self.offer_requiretls:
                # RFC 8689: REQUIRETLS is advertised only over TLS.
                self.extensions.add("REQUIRETLS")
            self._call("TLSHANDSHAKE")
            self._call("TLSHANDSHAKE2", self.io.socket)
        return ok

    def _on_auth(self, event: Auth) -> None:
        if self.auth_gate is not None:
            refusal = self.auth_gate()
            if refusal is not None:
                self._reply(refusal)
                return
        self._auth_mechanism = server_mechanism(event.mechanism, self.hostname)
        self.io.auth_exchange(True)
        self._auth_step(self._auth_mechanism.start(event.initial_response))

    def _on_auth_response(self, event: AuthResponse) -> None:
        if self._auth_mechanism is None:  # pragma: no cover - the core prevents it
            self._send_canned(UNKNOWN_COMMAND)
            return
        self._auth_step(self._auth_mechanism.respond(event.data))

    def _auth_step(self, step: Challenge | Success | Failure) -> None:
        if isinstance(step, Challenge):
            self._reply(Reply("334", step.text))
            return
        self._auth_mechanism = None
        self.io.auth_exchange(False)
        if isinstance(step, Failure):
            self._reply(Reply(step.code, step.message))
            return
        reply = Reply("535", "5.7.8 Authentication credentials invalid")
        step.credentials.offload = _in_threadpool
        if hasattr(self.handlers, "AUTH"):
            # The handler decides: it starts from success and refuses by
            # changing the reply.  Without a handler nobody can verify the
            # credentials, so authentication fails closed.
            reply = Reply("235", "2.7.0 Authentication successful")
            self._call("AUTH", reply, step.credentials)
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


class _ReadTimedOut(BaseException):
    """Thrown into a session blocked in a read past its deadline.

    A BaseException, like :class:`gevent.Timeout`, so that no handler's
    ``except Exception`` can swallow it.
    """


class _ReadTimer:
    """A timer re-armed for each read of one session, then closed.

    Restarting one libev timer costs a fraction of creating a
    :class:`gevent.Timeout` per read.
    """

    __slots__ = ("expired", "timer")

    def __init__(self, seconds: float) -> None:
        self.timer = gevent.get_hub().loop.timer(seconds, seconds)
        self.expired = _ReadTimedOut(f"read timed out after {seconds} s")

    def arm(self) -> None:
        self.timer.again(gevent.getcurrent().throw, self.expired, update=True)

    def disarm(self) -> None:
        self.timer.stop()

    def close(self) -> None:
        self.timer.close()


class _Parked:
    """A parked session's two watchers; the first to fire wakes the session."""

    __slots__ = ("server", "timer", "wake", "watcher")

    def __init__(
        self, server: Server, watcher: Any, timer: Any, wake: Callable[[Server, bool], None]
    ) -> None:
        self.server = server
        self.watcher = watcher
        self.timer = timer
        self.wake = wake

    def fire(self, timed_out: bool) -> None:
        self.watcher.stop()
        self.watcher.close()
        self.timer.stop()
        if self.timer is not self.server._command_timer.timer:
            self.timer.close()
        self.wake(self.server, timed_out)

    def cancel(self) -> None:
        """Stop watching without waking (the edge is shutting down)."""
        self.watcher.stop()
        self.watcher.close()
        self.timer.stop()


def _in_threadpool(func: Callable[..., bool], *args: Any) -> bool:
    """Run a CPU-bound check (password hashing) off the gevent hub."""
    return bool(gevent.get_hub().threadpool.apply(func, args))


def _with_size(limits: SmtpLimits, size: int) -> SmtpLimits:
    return dataclasses.replace(limits, max_message_size=size)
