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
"""

from __future__ import annotations

import re
from typing import Final

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
from slimta.smtp._grammar import GrammarError, parse_params, parse_path_argument
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

CRLF: Final = b"\r\n"
END_OF_DATA: Final = b"\r\n.\r\n"


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

_INSECURE_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,19}\Z")
_BDAT_ARGS = re.compile(r"([0-9]{1,18})(?: +(LAST))? *\Z", re.IGNORECASE)
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
_JUNK = (Noop, Rset, UnknownCommand)
# MAIL parameter -> (extension that must be offered, keyword without value,
# TLS required).
_EXTENSION_PARAMS: Final[dict[str, tuple[str, bool, bool]]] = {
    "SMTPUTF8": ("SMTPUTF8", True, False),
    "AUTH": ("AUTH", False, False),
    "REQUIRETLS": ("REQUIRETLS", True, True),
    "RET": ("DSN", False, False),
    "ENVID": ("DSN", False, False),
}
# Returned by _read_line for a line the core has already answered (too long).
_ANSWERED: Final = b"<answered>"


def _reply(code: str, message: str) -> Reply:
    return Reply(code, message)


class ServerConnection:
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

    def _read_line(self) -> bytes | None:
        """Cut one CRLF-terminated line, bounded by the line limit."""
        limit = (
            self.limits.max_auth_line_length if self.mode is InputMode.AUTH else self.limits.max_line_length
        )
        buf = self._buf
        end = buf.find(CRLF, self._scan_from)
        if end < 0:
            if len(buf) > limit:
                # Keep nothing of an overlong line but its last octet (it may
                # be the CR of the CRLF that ends it).
                self._discarding_line = True
                del buf[:-1]
            self._scan_from = max(0, len(buf) - 1)
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        self._scan_from = 0
        if self._discarding_line or end + 2 > limit:
            self._discarding_line = False
            if self.mode is InputMode.AUTH:
                # Fix: the 500 is a final reply to the AUTH exchange; the
                # client's next line is a command, not a SASL response.
                self.mode = InputMode.COMMAND
            self._refuse("500", "5.5.6 Line too long")
            return _ANSWERED
        return line

    def _parse_line(self, line: bytes) -> Event | None:
        if self.mode is InputMode.AUTH:
            return self._parse_auth_response(line)
        self.commands += 1
        if self.commands > self.limits.max_commands:
            self._queue(_reply("421", "4.7.0 Too many commands, closing connection"))
            return None
        verb_bytes, _, arg_bytes = line.partition(b" ")
        if not _VERB.match(verb_bytes):
            self._refuse("500", "5.5.2 Syntax error, command unrecognized")
            return None
        verb = verb_bytes.decode("ascii").upper()
        try:
            arg = arg_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse("500", "5.5.2 Invalid UTF-8 in command")
            return None
        if "\r" in arg or "\n" in arg or "\x00" in arg:
            # Fix: 501 (bad argument), as for any other control character
            # in an address; the verb itself was fine.
            self._refuse("501", "5.5.2 Bare CR, LF or NUL in command")
            return None
        event = self._build_command(verb, arg.strip(" "))
        if event is None:
            return None
        return self._check_sequence(event)

    def _build_command(self, verb: str, arg: str) -> Event | None:
        if verb in ("EHLO", "HELO"):
            if not arg or " " in arg:
                self._refuse("501", f"5.5.4 Syntax: {verb} hostname")
                return None
            return Ehlo(arg) if verb == "EHLO" else Helo(arg)
        if verb == "MAIL":
            return self._build_mail(arg)
        if verb == "RCPT":
            return self._build_rcpt(arg)
        if verb == "DATA":
            return self._no_arg(verb, arg, Data())
        if verb == "BDAT":
            return self._build_bdat(arg)
        if verb == "RSET":
            return self._no_arg(verb, arg, Rset())
        if verb == "NOOP":
            return Noop(arg)
        if verb == "QUIT":
            return self._no_arg(verb, arg, Quit())
        if verb == "STARTTLS":
            if "STARTTLS" not in self.extensions or self.encrypted:
                self._refuse("500", "5.5.2 Syntax error, command unrecognized")
                return None
            return self._no_arg(verb, arg, StartTls())
        if verb == "AUTH":
            return self._build_auth(arg)
        return UnknownCommand(verb, arg)

    def _no_arg(self, verb: str, arg: str, event: Event) -> Event | None:
        if arg:
            self._refuse("501", f"5.5.4 Syntax: {verb} takes no arguments")
            return None
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

    def _build_mail(self, arg: str) -> Event | None:
        try:
            address, rest = parse_path_argument(arg, "FROM", allow_null=True)
            params = parse_params(rest)
        except GrammarError as exc:
            if exc.address:
                self._refuse("501", f"5.1.7 Bad sender address syntax ({exc})")
            else:
                self._refuse("501", f"5.5.4 {exc}")
            return None
        if params and not self.extended:
            self._refuse("555", "5.5.4 MAIL parameters require EHLO")
            return None
        problem = self._check_mail_params(params)
        if problem is not None:
            self._refuse(*problem)
            return None
        if not address.isascii() and "SMTPUTF8" not in params:
            self._refuse("553", "5.6.7 Non-ASCII address requires SMTPUTF8")
            return None
        return MailFrom(address, params)

    def _check_mail_params(self, params: dict[str, str | bool]) -> tuple[str, str] | None:
        for key, value in params.items():
            if key == "SIZE":
                problem = self._check_size(value)
            elif key == "BODY":
                body = value.upper() if isinstance(value, str) else ""
                ok = body == "7BIT" or (body == "8BITMIME" and "8BITMIME" in self.extensions)
                problem = None if ok else ("501", "5.5.4 Unsupported BODY parameter")
            elif key in _EXTENSION_PARAMS:
                problem = self._check_extension_param(key, value)
            else:
                problem = ("555", f"5.5.4 Unsupported parameter {key}")
            if problem is not None:
                return problem
        return None

    def _check_size(self, value: str | bool) -> tuple[str, str] | None:
        if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 18:
            return ("501", "5.5.4 Invalid SIZE parameter")
        limit = self.limits.max_message_size
        if limit is not None and int(value) > limit:
            return ("552", f"5.3.4 Message size exceeds fixed limit of {limit} octets")
        return None

    def _check_extension_param(self, key: str, value: str | bool) -> tuple[str, str] | None:
        """A MAIL parameter that is valid only when its extension is offered."""
        extension, needs_flag, needs_tls = _EXTENSION_PARAMS[key]
        # AUTH= (RFC 4954 5) is passed on to hooks unchanged and trusted only
        # from authenticated clients; REQUIRETLS (RFC 8689) is offered, and
        # so accepted, only over TLS; the handlers decide what to do with it.
        if (
            extension not in self.extensions
            or (needs_flag and value is not True)
            or (needs_tls and not self.encrypted)
        ):
            return ("555", f"5.5.4 {key} parameter not supported")
        return None

    def _build_rcpt(self, arg: str) -> Event | None:
        try:
            address, rest = parse_path_argument(arg, "TO", allow_null=False)
            params = parse_params(rest)
        except GrammarError as exc:
            if exc.address:
                self._refuse("501", f"5.1.3 Bad recipient address syntax ({exc})")
            else:
                self._refuse("501", f"5.5.4 {exc}")
            return None
        for key in params:
            if key not in ("NOTIFY", "ORCPT") or "DSN" not in self.extensions:
                self._refuse("555", f"5.5.4 Unsupported parameter {key}")
                return None
        if not address.isascii() and not self._smtputf8:
            self._refuse("553", "5.6.7 Non-ASCII address requires SMTPUTF8")
            return None
        return RcptTo(address, params)

    def _build_auth(self, arg: str) -> Event | None:
        if "AUTH" not in self.extensions or not self.auth_mechanisms:
            self._refuse("500", "5.5.2 Syntax error, command unrecognized")
            return None
        # RFC 4954 4: AUTH needs an EHLO session and no open transaction.
        if self.phase is not Phase.IDLE or self.authenticated or not self.extended:
            self._refuse("503", "5.5.1 Bad sequence of commands")
            return None
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if not mechanism or " " in initial.strip():
            self._refuse("501", "5.5.4 Syntax: AUTH mechanism [initial-response]")
            return None
        if mechanism not in self.auth_mechanisms:
            self._refuse("504", "5.5.4 Unrecognized authentication type")
            return None
        if mechanism in _INSECURE_MECHANISMS and not self.encrypted:
            self._refuse(
                "538",
                "5.7.11 Encryption required for requested authentication mechanism",
            )
            return None
        initial = initial.strip()
        return Auth(mechanism, None if not initial else ("" if initial == "=" else initial))

    def _parse_auth_response(self, line: bytes) -> Event | None:
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            # RFC 4954 4: the client cancelled the exchange.
            self.mode = InputMode.COMMAND
            # A cancelled exchange counts as a failed attempt, so a client
            # cannot probe passwords for free by cancelling.
            self.auth_failures += 1
            if self.auth_failures >= self.limits.max_auth_failures:
                self._queue(_reply("501", "5.7.0 Authentication cancelled"))
                self._queue(_reply("421", "4.7.0 Too many failed authentication attempts"))
                return None
            self._refuse("501", "5.7.0 Authentication cancelled")
            return None
        return AuthResponse(text)

    def _build_bdat(self, arg: str) -> Event | None:
        if "CHUNKING" not in self.extensions:
            self._refuse("500", "5.5.2 Syntax error, command unrecognized")
            return None
        match = _BDAT_ARGS.match(arg)
        if not match:
            # We cannot know how many octets follow; they will be read as
            # (bad) commands and count towards the error limit.
            self._refuse("501", "5.5.4 Syntax: BDAT size [LAST]")
            return None
        size = int(match.group(1))
        last = match.group(2) is not None
        allowed = self.phase in (Phase.RCPT, Phase.BDAT)
        first = self.phase is Phase.RCPT
        if first:
            self._message.clear()
            self._message_too_big = False
        # The chunk's octets are on the wire whatever we think of the
        # command: always consume exactly ``size`` of them, never parse them.
        self._bdat_header = (size, last, first, allowed)
        self._bdat_remaining = size
        self.mode = InputMode.BDAT
        return None

    def _read_bdat(self) -> Event | _NeedData | None:
        assert self._bdat_header is not None
        size, last, first, allowed = self._bdat_header
        take = min(self._bdat_remaining, len(self._buf))
        if take:
            if allowed and not self._message_too_big:
                self._message += memoryview(self._buf)[:take]
                limit = self.limits.max_message_size
                if limit is not None and len(self._message) > limit:
                    self._message_too_big = True
                    self._message.clear()
            del self._buf[:take]
            self._bdat_remaining -= take
        if self._bdat_remaining:
            return NEED_DATA
        self.mode = InputMode.COMMAND
        self._bdat_header = None
        if not allowed:
            self._refuse("503", "5.5.1 Bad sequence of commands")
            return None
        if last and self._message_too_big:
            return Bdat(size, last, first, None, _too_big_reply(self.limits.max_message_size))
        if last:
            return Bdat(size, last, first, self.take_message())
        return Bdat(size, last, first)

    def _read_data(self) -> Event | _NeedData:
        buf = self._buf
        # The buffer starts with a virtual CRLF (added on entering DATA), so
        # a message ended by a lone ".\r\n" on its first line is found too.
        end = buf.find(END_OF_DATA, self._scan_from)
        if end < 0:
            limit = self.limits.max_message_size
            # Stuffed dots may make the raw data a little larger than the
            # message; the exact check happens after unstuffing.
            if limit is not None and len(buf) > limit + limit // 8 + 1024:
                self._message_too_big = True
                del buf[:-4]
            self._scan_from = max(0, len(buf) - 4)
            return NEED_DATA
        self.mode = InputMode.COMMAND
        self._scan_from = 0
        too_big = self._message_too_big
        self._message_too_big = False
        if too_big:
            del buf[: end + 5]
            return MessageReceived(None, _too_big_reply(self.limits.max_message_size))
        raw = bytes(memoryview(buf)[2 : end + 2])
        del buf[: end + 5]
        strict = self.limits.bare_line_endings == "reject"
        # In strict mode also refuse the rest of the smuggling corpus
        # (RELIABILITY R2): a NUL (never valid in RFC 5322 text) and a line
        # starting with one dot the client did not stuff ("\r\n. \r\n"), both
        # of which some other MTAs take for the end of data.
        suspicious = strict and b"\x00" in raw
        if raw[:1] == b"." or b"\r\n." in raw:
            if strict and not suspicious:
                # Every "\r\n." must be the start of a stuffed "\r\n.." (the
                # occurrences cannot overlap, so equal counts mean all are).
                unstuffed = raw.count(b"\r\n.") != raw.count(b"\r\n..")
                suspicious = unstuffed or (raw[:1] == b"." and raw[1:2] != b".")
            # RFC 5321 4.5.2 drops the first character of *every* line that
            # starts with a dot (not only of ".." lines).
            raw = raw.replace(b"\r\n.", b"\r\n")
            if raw[:1] == b".":
                raw = raw[1:]
        limit = self.limits.max_message_size
        if limit is not None and len(raw) > limit:
            return MessageReceived(None, _too_big_reply(limit))
        crlf = raw.count(CRLF)
        if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
            if strict:
                return MessageReceived(
                    None,
                    _reply("550", "5.5.2 Message contains bare CR or LF characters"),
                )
            raw = _BARE_EOL.sub(CRLF, raw)
        if suspicious:
            return MessageReceived(
                None,
                _reply("550", "5.5.2 Message contains NUL or an unstuffed leading dot"),
            )
        return MessageReceived(raw)

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


def _too_big_reply(limit: int | None) -> Reply:
    return _reply("552", f"5.3.4 Message size exceeds fixed limit of {limit} octets")
