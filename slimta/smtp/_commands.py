"""Command parsing for :class:`slimta.smtp.protocol.ServerConnection`.

Theory of operation
-------------------
A command line cut by :mod:`slimta.smtp._framing` comes here to become an
event: the verb is checked and dispatched, and the arguments of MAIL, RCPT
and AUTH (and of an AUTH exchange's responses) are parsed and checked against
the extensions offered and the session's state.  A command that fails a check
is refused with its coded reply and never becomes an event.  The result then
goes back to :mod:`slimta.smtp.protocol` for the sequence check against
:data:`~slimta.smtp.protocol.TRANSITIONS`, which stays with the state machine.

:class:`_Commands` is a mixin that :class:`~slimta.smtp.protocol.ServerConnection`
inherits: the methods run on the connection itself, with no call layer added
on the hot path (every command goes through here).  The annotations below
only tell the type checker which attributes of the connection these methods
use; they create nothing at run time.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from slimta.smtp._events import (
    Auth,
    AuthResponse,
    Data,
    Ehlo,
    Event,
    Helo,
    InputMode,
    MailFrom,
    Noop,
    Phase,
    Quit,
    RcptTo,
    Rset,
    SmtpLimits,
    StartTls,
    UnknownCommand,
)
from slimta.smtp._framing import _reply
from slimta.smtp._grammar import GrammarError, parse_params, parse_path_argument

if TYPE_CHECKING:
    from slimta.smtp.extensions import Extensions
    from slimta.smtp.reply import Reply

_INSECURE_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9_-]{0,19}\Z")
# MAIL parameter -> (extension that must be offered, keyword without value,
# TLS required).
_EXTENSION_PARAMS: Final[dict[str, tuple[str, bool, bool]]] = {
    "SMTPUTF8": ("SMTPUTF8", True, False),
    "AUTH": ("AUTH", False, False),
    "REQUIRETLS": ("REQUIRETLS", True, True),
    "RET": ("DSN", False, False),
    "ENVID": ("DSN", False, False),
}


class _Commands:
    """Turning a command line into an event, or refusing it."""

    limits: SmtpLimits
    extensions: Extensions
    phase: Phase
    mode: InputMode
    encrypted: bool
    extended: bool
    authenticated: bool
    auth_mechanisms: tuple[str, ...]
    auth_failures: int
    commands: int
    _smtputf8: bool

    if TYPE_CHECKING:

        def _queue(self, reply: Reply) -> None: ...

        def _refuse(self, code: str, message: str) -> None: ...

        def _check_sequence(self, event: Event) -> Event | None: ...

        def _build_bdat(self, arg: str) -> Event | None: ...

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

    def _path_and_params(
        self, arg: str, keyword: str, allow_null: bool, bad_address: str
    ) -> tuple[str, dict[str, str | bool]] | None:
        """Split a MAIL/RCPT argument; refuse it (501) if malformed."""
        try:
            address, rest = parse_path_argument(arg, keyword, allow_null=allow_null)
            return address, parse_params(rest)
        except GrammarError as exc:
            self._refuse("501", f"{bad_address} ({exc})" if exc.address else f"5.5.4 {exc}")
            return None

    def _build_mail(self, arg: str) -> Event | None:
        parsed = self._path_and_params(arg, "FROM", True, "5.1.7 Bad sender address syntax")
        if parsed is None:
            return None
        address, params = parsed
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
        parsed = self._path_and_params(arg, "TO", False, "5.1.3 Bad recipient address syntax")
        if parsed is None:
            return None
        address, params = parsed
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
