"""The sans-IO core of an SMTP server session (RFC 5321 and extensions).

Theory of operation
-------------------
:class:`ServerConnection` holds everything an SMTP server must know about one
session and does no I/O at all.  Its driver (:mod:`slimta.smtp.server`) does
three things in a loop::

    conn.receive_data(bytes_from_socket)     # b"" means the client closed
    event = conn.next_event()                # a command, a message, or NEED_DATA
    conn.send_reply(reply)                   # answer the event just returned
    sock.sendall(conn.data_to_send())        # before blocking in recv()

The core parses commands, checks their sequence and syntax, enforces every
limit, frames DATA (end only at CRLF "." CRLF; dot-unstuffing) and BDAT,
and tracks state from the replies the driver sends.  A command that is out
of sequence, malformed or over a limit never reaches the driver: the core
queues the coded error reply itself and moves on to the next command.  The
driver only sees well-formed commands it may act on, and its replies are
checked for the state change they imply (``250`` to MAIL opens a
transaction, ``220`` to STARTTLS discards buffered plaintext, ``221``/``421``
close the session).

Security rules kept here, once, for every driver:

* DATA ends only at ``<CRLF>.<CRLF>``.  Bare CR or LF inside a message never
  ends it; by default a message containing them is refused with ``550
  5.5.2`` after its real end (``bare_line_endings="reject"``), or they are
  turned into CRLF (``"normalize"``).  This closes SMTP smuggling.
* After the ``220`` reply to STARTTLS every byte still buffered is dropped
  (CVE-2011-0411 class); :attr:`ServerConnection.discarded_plaintext` counts
  them.
* Buffers are bounded: a command line may not exceed
  :attr:`SmtpLimits.max_line_length`; the excess is discarded, not stored,
  and answered with ``500 5.5.6``.  A message past the size limit is drained
  to its real end without being kept, then answered with ``552 5.3.4``.
* Error, junk-command, recipient and authentication-failure limits end in
  coded replies (``421`` closes the session).

Events are frozen dataclasses; the session's transaction phase follows the
table :data:`TRANSITIONS` (which command is allowed in which phase, and the
phase a success reply moves to).

Where things live
-----------------
This module keeps the public API and the state machine: the three calls, the
driver notifications, the sequence check against :data:`TRANSITIONS` and the
effect of each reply.  Two private mixins, inherited by
:class:`ServerConnection` so that no call layer is added on the hot path,
hold the rest: :mod:`slimta.smtp._framing` cuts command lines, DATA messages
and BDAT chunks out of the input, and :mod:`slimta.smtp._commands` turns a
command line into an event (verb dispatch, MAIL/RCPT/AUTH arguments).
"""

from __future__ import annotations

from typing import Final

from slimta.smtp._commands import _Commands
from slimta.smtp._events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    Ehlo,
    Event,
    Greeting,
    Helo,
    InputMode,
    MailFrom,
    MessageReceived,
    Noop,
    Phase,
    Quit,
    RcptTo,
    Rset,
    SmtpLimits,
    StartTls,
    UnknownCommand,
    _NeedData,
)

# END_OF_DATA is re-exported: it was defined here before the framing moved.
from slimta.smtp._framing import _ANSWERED, CRLF, END_OF_DATA, _Framing, _reply  # noqa: F401
from slimta.smtp.extensions import Extensions
from slimta.smtp.reply import Reply

__all__ = [
    "NEED_DATA",
    "TRANSITIONS",
    "Auth",
    "AuthResponse",
    "Bdat",
    "ConnectionClosed",
    "Data",
    "Ehlo",
    "Event",
    "Greeting",
    "Helo",
    "InputMode",
    "LocalProtocolError",
    "MailFrom",
    "MessageReceived",
    "Noop",
    "Phase",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Rset",
    "ServerConnection",
    "SmtpLimits",
    "StartTls",
    "UnknownCommand",
]


class ProtocolError(Exception):
    """The core was used in a way the protocol does not allow."""


class LocalProtocolError(ProtocolError):
    """The driver (our own code) misused the core, e.g. replied twice."""


_GREETED = frozenset({Phase.IDLE, Phase.MAIL, Phase.RCPT, Phase.BDAT})

#: (event type) -> (phases in which it is allowed, phase after a 2xx/3xx reply).
#: ``None`` as the next phase means "unchanged".  The core consults this table
#: before an event reaches the driver and again when the reply is sent.
TRANSITIONS: Final[dict[type, tuple[frozenset[Phase], Phase | None]]] = {
    Ehlo: (frozenset({Phase.CONNECTED}) | _GREETED, Phase.IDLE),
    Helo: (frozenset({Phase.CONNECTED}) | _GREETED, Phase.IDLE),
    StartTls: (frozenset({Phase.IDLE}), None),
    Auth: (frozenset({Phase.IDLE}), None),
    MailFrom: (frozenset({Phase.IDLE}), Phase.MAIL),
    RcptTo: (frozenset({Phase.MAIL, Phase.RCPT}), Phase.RCPT),
    Data: (frozenset({Phase.RCPT}), None),
    Bdat: (frozenset({Phase.RCPT, Phase.BDAT}), Phase.BDAT),
    Rset: (frozenset({Phase.CONNECTED}) | _GREETED, None),
    Noop: (frozenset({Phase.CONNECTED}) | _GREETED, None),
    Quit: (frozenset({Phase.CONNECTED, Phase.REFUSED}) | _GREETED, None),
    UnknownCommand: (frozenset({Phase.CONNECTED}) | _GREETED, None),
}

_JUNK = (Noop, Rset, UnknownCommand)


class ServerConnection(_Commands, _Framing):
    """One SMTP server session, without I/O.

    Args:
        extensions: the extensions the server offers (read when checking
            commands: STARTTLS, AUTH, SIZE, 8BITMIME, SMTPUTF8, CHUNKING...).
            The driver may change it, e.g. drop STARTTLS after the handshake.
        limits: the session limits.
        encrypted: the transport is already TLS (implicit TLS).
        auth_mechanisms: SASL mechanism names offered with AUTH.
    """

    def __init__(
        self,
        extensions: Extensions | None = None,
        limits: SmtpLimits | None = None,
        *,
        encrypted: bool = False,
        auth_mechanisms: tuple[str, ...] = (),
    ) -> None:
        self.extensions = extensions if extensions is not None else Extensions()
        self.limits = limits or SmtpLimits()
        self.encrypted = encrypted
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.phase = Phase.GREETING
        self.mode = InputMode.COMMAND
        #: The EHLO/HELO name, once greeted.
        self.ehlo_as: str | None = None
        #: True after EHLO (ESMTP), False after HELO.
        self.extended = False
        self.authenticated = False
        #: Octets of plaintext dropped after STARTTLS (injection attempts).
        self.discarded_plaintext = 0
        self.errors = 0
        self.junk_commands = 0
        self.commands = 0
        self.auth_failures = 0
        self.recipients = 0
        self._smtputf8 = False
        self._buf = bytearray()
        self._scan_from = 0
        self._eof = False
        self._out: list[bytes] = []
        self._pending: Event | None = None
        self._discarding_line = False
        self._message = bytearray()
        self._message_too_big = False
        self._bdat_remaining = 0
        self._bdat_header: tuple[int, bool, bool, bool] | None = None
        self._greeted = False

    # -- the three calls -----------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the client; ``b""`` means it closed."""
        if self.mode is InputMode.TLS:
            raise LocalProtocolError("receive_data() during the TLS handshake")
        if self.phase is Phase.CLOSED:
            # Fix: nothing is read after 221/421, so do not let a client that
            # keeps sending grow the buffer while the driver closes.
            return
        if not data:
            self._eof = True
            return
        self._buf += data

    def next_event(self) -> Event | _NeedData:
        """Return the next event, or :data:`NEED_DATA`.

        Raises:
            LocalProtocolError: the previous event has not been answered.
        """
        if self._pending is not None:
            raise LocalProtocolError(f"{self._pending!r} has not been answered")
        event = self._next_event()
        if event is not NEED_DATA and not isinstance(event, ConnectionClosed):
            self._pending = event  # type: ignore[assignment]
        return event

    def send_reply(self, reply: Reply) -> None:
        """Answer the pending event with ``reply`` and apply its effect."""
        event = self._pending
        if event is None:
            raise LocalProtocolError("send_reply() with no event to answer")
        self._pending = None
        self._queue(reply)
        self._apply(event, reply)

    def data_to_send(self) -> bytes:
        """Drain the bytes to write to the client (replies, possibly several)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    # -- driver notifications ------------------------------------------------

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS succeeded: start afresh (RFC 3207 4.2)."""
        self.encrypted = True
        self.mode = InputMode.COMMAND
        self.phase = Phase.CONNECTED
        self.ehlo_as = None
        self.extended = False
        # RFC 3207 4.2: knowledge from before TLS, AUTH included, is discarded.
        self.authenticated = False
        self._buf.clear()
        self._scan_from = 0

    @property
    def closed(self) -> bool:
        """True once a 221/421 was sent: the driver should close the socket."""
        return self.phase is Phase.CLOSED

    @property
    def in_data(self) -> bool:
        """True while message content is being read (for the data timeout)."""
        return self.mode in (InputMode.DATA, InputMode.BDAT)

    def take_message(self) -> bytes:
        """Hand over the message accumulated by BDAT chunks (used by the driver)."""
        data = bytes(self._message)
        self._message.clear()
        return data

    # -- internals: producing events -------------------------------------------

    def _queue(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())
        code = reply.code or ""
        if code[:1] in ("4", "5"):
            self.errors += 1
        if code in ("221", "421"):
            self.phase = Phase.CLOSED

    def _refuse(self, code: str, message: str) -> None:
        """Answer a command the driver never sees, and count the error."""
        self._queue(_reply(code, message))
        if self.phase is not Phase.CLOSED and self.errors >= self.limits.max_errors:
            self._queue(_reply("421", "4.7.0 Too many errors, closing connection"))

    def _next_event(self) -> Event | _NeedData:
        if not self._greeted:
            self._greeted = True
            return Greeting()
        while True:
            if self.phase is Phase.CLOSED:
                return ConnectionClosed()
            if self.mode is InputMode.DATA:
                event: Event | _NeedData | None = self._read_data()
            elif self.mode is InputMode.BDAT:
                event = self._read_bdat()
            elif self.mode is InputMode.TLS:
                return NEED_DATA
            else:
                line = self._read_line()
                if line is None:
                    event = NEED_DATA
                elif line is _ANSWERED:
                    event = None
                else:
                    event = self._parse_line(line)
            if event is NEED_DATA:
                return ConnectionClosed() if self._eof else NEED_DATA
            if event is not None:
                return event

    def _check_sequence(self, event: Event) -> Event | None:
        if self.phase is Phase.REFUSED and not isinstance(event, Quit):
            self._refuse("503", "5.5.1 Bad sequence of commands")
            return None
        allowed, _ = TRANSITIONS[type(event)]
        if self.phase not in allowed:
            self._refuse("503", "5.5.1 Bad sequence of commands")
            return None
        if isinstance(event, _JUNK):
            self.junk_commands += 1
            if self.junk_commands > self.limits.max_junk_commands:
                self._queue(_reply("421", "4.7.0 Too many junk commands, closing connection"))
                return None
        if isinstance(event, RcptTo) and self.recipients >= self.limits.max_recipients:
            self._refuse("452", "4.5.3 Too many recipients")
            return None
        if isinstance(event, Data) and self.phase is Phase.BDAT:
            self._refuse("503", "5.5.1 DATA not allowed after BDAT")
            return None
        return event

    # -- internals: applying replies -----------------------------------------------

    def _apply(self, event: Event, reply: Reply) -> None:
        code = reply.code or ""
        ok = code[:1] in ("2", "3")
        if self.phase is Phase.CLOSED:
            return
        if isinstance(event, Greeting):
            self.phase = Phase.CONNECTED if code == "220" else Phase.REFUSED
            return
        if isinstance(event, MessageReceived | Bdat) and (
            isinstance(event, MessageReceived) or event.last or not ok
        ):
            self._end_transaction()
            if code[:1] == "2" and (isinstance(event, MessageReceived) or event.last):
                # A delivered message shows good faith: forgive earlier slips.
                self.errors = 0
                self.junk_commands = 0
            return
        if isinstance(event, Auth | AuthResponse):
            self._apply_auth(code)
            return
        if not ok:
            self._check_error_limit()
            return
        _, next_phase = TRANSITIONS.get(type(event), (frozenset(), None))
        if isinstance(event, Ehlo | Helo):
            self.ehlo_as = event.hostname
            self.extended = isinstance(event, Ehlo)
            self._end_transaction()
        elif isinstance(event, MailFrom):
            self._smtputf8 = event.params.get("SMTPUTF8") is True
            self.recipients = 0
        elif isinstance(event, RcptTo):
            self.recipients += 1
        elif isinstance(event, Rset):
            self._end_transaction()
            return
        elif isinstance(event, StartTls) and code == "220":
            self.discarded_plaintext += len(self._buf)
            self._buf.clear()
            self._scan_from = 0
            self.mode = InputMode.TLS
            return
        elif isinstance(event, Data) and code == "354":
            self._buf[0:0] = CRLF
            self._scan_from = 0
            self._message_too_big = False
            self.mode = InputMode.DATA
            return
        if next_phase is not None:
            self.phase = next_phase

    def _apply_auth(self, code: str) -> None:
        if code == "334":
            self.mode = InputMode.AUTH
            return
        self.mode = InputMode.COMMAND
        if code[:1] == "2":
            self.authenticated = True
            return
        self.auth_failures += 1
        if self.auth_failures >= self.limits.max_auth_failures:
            self._queue(_reply("421", "4.7.0 Too many failed authentication attempts"))
        else:
            self._check_error_limit()

    def _check_error_limit(self) -> None:
        if self.phase is not Phase.CLOSED and self.errors >= self.limits.max_errors:
            self._queue(_reply("421", "4.7.0 Too many errors, closing connection"))

    def _end_transaction(self) -> None:
        if self.phase in (Phase.MAIL, Phase.RCPT, Phase.BDAT):
            self.phase = Phase.IDLE
        self.recipients = 0
        self._smtputf8 = False
        self._message.clear()
        self._message_too_big = False
