"""SMTP replies: a three-digit code and a message, with enhanced status codes.

A :class:`Reply` is a plain value, free of any I/O.  Its ``message`` carries
the RFC 3463 enhanced status code in front of the text (``'2.1.0 Sender
<a@b> Ok'``), exactly as in python-slimta 4.0, so hooks can read and rewrite
replies the way existing scripts do.  The code and the enhanced status code
are kept in step: change ``code`` from ``'250'`` to ``'550'`` and the class of
the enhanced code follows (``5.1.0``), unless the message names its own.

:meth:`Reply.to_bytes` renders the wire form, splitting a message that holds
``\\r\\n`` into an RFC 5321 multi-line reply and replacing any other control
character with a space, so nothing a client sent can break the framing of
what we send back.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "BAD_ARGUMENTS",
    "BAD_SEQUENCE",
    "CONNECTION_FAILED",
    "INVALID_CREDENTIALS",
    "TIMED_OUT",
    "TLS_FAILURE",
    "UNHANDLED_ERROR",
    "UNKNOWN_COMMAND",
    "UNKNOWN_PARAMETER",
    "Reply",
    "bad_arguments",
    "bad_sequence",
    "connection_failed",
    "invalid_credentials",
    "timed_out",
    "tls_failure",
    "unhandled_error",
    "unknown_command",
    "unknown_parameter",
]

_CODE = re.compile(r"[1-5][0-9][0-9]\Z")
_KNOWN_CODES = frozenset(
    (
        "220",
        "221",
        "235",
        "250",
        "251",
        "252",
        "334",
        "354",
        "421",
        "450",
        "451",
        "452",
        "500",
        "501",
        "502",
        "503",
        "504",
        "535",
        "550",
        "552",
        "553",
        "554",
    )
)
_ESC_PREFIX = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+|\Z)")
_ESC = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})\Z")
# Anything but TAB and printable octets is replaced before a reply is sent.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Reply:
    """An SMTP reply.

    Args:
        code: the three-digit reply code as a string, e.g. ``'250'``.
        message: the text, optionally starting with an enhanced status code
            (``'2.0.0 Ok'``).  A message containing ``'\\r\\n'`` is sent as a
            multi-line reply.
        command: the command this reply answers (for logs and errors).
        address: the peer that sent (or will receive) the reply.

    A reply whose code is ``None`` is "empty" and false in a boolean context.
    """

    __slots__ = ("_code", "_esc", "_text", "address", "command", "newline_first")

    def __init__(
        self,
        code: str | None = None,
        message: str | None = None,
        command: str | None = None,
        address: Any = None,
    ) -> None:
        self._code: str | None = None
        # None: derive "X.0.0" from the code; False: send no enhanced code;
        # a (subject, detail) tuple: the enhanced code given explicitly.
        self._esc: tuple[str, str] | bool | None = None
        self._text: str | None = None
        self.command = command
        self.address = address
        #: Send a bare CRLF before the reply (used for asynchronous replies,
        #: such as a timeout, that may interrupt a half-sent client line).
        self.newline_first = False
        self.code = code
        self.message = message

    # -- code -------------------------------------------------------------

    @property
    def code(self) -> str | None:
        """The three-digit reply code, as a string."""
        return self._code

    @code.setter
    def code(self, value: str | None) -> None:
        if value is not None and value not in _KNOWN_CODES and not _CODE.match(value):
            raise ValueError(f"Invalid SMTP reply code: {value!r}")
        self._code = value or None

    # -- enhanced status code --------------------------------------------

    @property
    def enhanced_status_code(self) -> str | None:
        """The RFC 3463 enhanced status code, e.g. ``'2.1.0'``, or ``None``.

        Its class always follows the reply code.  Set it to ``False`` to send
        the reply without one (banners and EHLO replies), or to a string to
        change it.
        """
        code = self._code
        if not code or code[0] not in "245" or self._esc is False:
            return None
        if isinstance(self._esc, tuple):
            return f"{code[0]}.{self._esc[0]}.{self._esc[1]}"
        return f"{code[0]}.0.0"

    @enhanced_status_code.setter
    def enhanced_status_code(self, value: str | bool | None) -> None:
        if value is None or value is False:
            self._esc = value
            return
        if value is True:
            self._esc = None
            return
        match = _ESC.match(value)
        if not match:
            raise ValueError(f"Invalid enhanced status code: {value!r}")
        self._esc = (match.group(2), match.group(3))

    # -- message ----------------------------------------------------------

    @property
    def message(self) -> str | None:
        """The message text, with the enhanced status code in front."""
        esc = self.enhanced_status_code
        if esc and self._text:
            return f"{esc} {self._text}"
        if esc and self._text == "":
            return esc
        return self._text

    @message.setter
    def message(self, value: str | None) -> None:
        # Only a message starting "N." can carry an enhanced status code;
        # checking that first skips the regex for most replies.
        if value and value[1:2] == "." and value[:1] in "245":
            match = _ESC_PREFIX.match(value)
            if match:
                self._esc = (match.group(2), match.group(3))
                self._text = value[match.end() :]
                return
        if self._esc is not False:
            self._esc = None
        self._text = value

    @property
    def raw_message(self) -> str | None:
        """The message text without the enhanced status code."""
        return self._text

    # -- behaviour --------------------------------------------------------

    def copy(self, reply: Reply) -> Reply:
        """Make this reply's code and message those of ``reply``; returns self."""
        self._code = reply._code
        self._esc = reply._esc
        self._text = reply._text
        self.newline_first = reply.newline_first
        return self

    def is_error(self) -> bool:
        """True for a 4xx or 5xx reply."""
        return bool(self._code) and self._code[0] in "45"  # type: ignore[index]

    def to_bytes(self) -> bytes:
        """Render the reply as it goes on the wire, CRLF-terminated.

        A message holding ``'\\r\\n'`` becomes a multi-line reply; every other
        control character is replaced with a space.
        """
        code = self._code or "451"
        message = self.message or ""
        if message.isprintable() and not self.newline_first:
            # The common case: one line, nothing to escape.
            return f"{code} {message}\r\n".encode()
        lines = message.split("\r\n")
        out = []
        last = len(lines) - 1
        # RFC 2034 section 4: every line of a multi-line reply carries the
        # enhanced status code, not just the first.
        esc = self.enhanced_status_code
        for i, line in enumerate(lines):
            if i and esc and not line.startswith(esc):
                line = f"{esc} {line}"
            safe = _UNSAFE.sub(" ", line)
            sep = " " if i == last else "-"
            out.append(f"{code}{sep}{safe}\r\n")
        data = "".join(out).encode("utf-8", "replace")
        return b"\r\n" + data if self.newline_first else data

    def __bool__(self) -> bool:
        return self._code is not None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return self.code == other.code and self.message == other.message

    __hash__ = None  # type: ignore[assignment]  # mutable value

    def __contains__(self, substr: str | bytes) -> bool:
        if isinstance(substr, bytes):
            return substr in bytes(self)
        return substr in str(self)

    def __str__(self) -> str:
        return f"{self.code} {self.message}"

    def __bytes__(self) -> bytes:
        return f"{self.code} {self.message}".encode()

    def __repr__(self) -> str:
        return f"<Reply code={self.code!r} message={self.message!r}>"


def _canned(code: str, message: str) -> Reply:
    return Reply(code, message)


#: An unknown or unimplemented command.
UNKNOWN_COMMAND = _canned("500", "5.5.2 Syntax error, command unrecognized")
#: A MAIL/RCPT parameter we do not implement.
UNKNOWN_PARAMETER = _canned("555", "5.5.4 Command parameter not implemented")
#: A command out of the RFC 5321 sequence.
BAD_SEQUENCE = _canned("503", "5.5.1 Bad sequence of commands")
#: Bad syntax in a command's arguments.
BAD_ARGUMENTS = _canned("501", "5.5.4 Syntax error in parameters or arguments")
#: An exception escaped a handler; the session ends.
UNHANDLED_ERROR = _canned("421", "4.3.0 Unhandled system error")
#: The TLS handshake failed; the session ends.
TLS_FAILURE = _canned("421", "4.7.0 TLS negotiation failed")
#: A connection to a peer failed.
CONNECTION_FAILED = _canned("451", "4.3.0 Connection failed")
#: The peer was idle too long; the session ends.
TIMED_OUT = _canned("421", "4.4.2 Connection timed out")
TIMED_OUT.newline_first = True
#: Authentication failed.
INVALID_CREDENTIALS = _canned("535", "5.7.8 Authentication credentials invalid")

# The lower-case names of python-slimta 4.0.
unknown_command = UNKNOWN_COMMAND
unknown_parameter = UNKNOWN_PARAMETER
bad_sequence = BAD_SEQUENCE
bad_arguments = BAD_ARGUMENTS
unhandled_error = UNHANDLED_ERROR
tls_failure = TLS_FAILURE
connection_failed = CONNECTION_FAILED
timed_out = TIMED_OUT
invalid_credentials = INVALID_CREDENTIALS
