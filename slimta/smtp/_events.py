"""Events and limits of the sans-IO SMTP server core.

Split out of :mod:`slimta.smtp.protocol` (which re-exports every name) to keep
each module readable: this one holds the plain data the core hands to its
driver -- one frozen dataclass per command or message -- plus the limits
object and the two state enums.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from slimta.smtp.reply import Reply

# -- events ----------------------------------------------------------------


class _NeedData:
    """Sentinel: the core needs more bytes before it can produce an event."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


@dataclass(frozen=True, slots=True)
class Greeting:
    """The session starts: the driver answers with the banner (220)."""


@dataclass(frozen=True, slots=True)
class Ehlo:
    """``EHLO hostname``."""

    hostname: str


@dataclass(frozen=True, slots=True)
class Helo:
    """``HELO hostname``."""

    hostname: str


@dataclass(frozen=True, slots=True)
class StartTls:
    """``STARTTLS``: a 220 reply makes the core drop buffered plaintext."""


@dataclass(frozen=True, slots=True)
class Auth:
    """``AUTH mechanism [initial-response]`` (mechanism upper-cased).

    ``initial_response`` is ``None`` when absent, ``""`` for ``=``.
    """

    mechanism: str
    initial_response: str | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """A client line answering a ``334`` challenge during AUTH."""

    data: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """``MAIL FROM:<address> params`` (the null sender is ``''``)."""

    address: str
    params: dict[str, str | bool]


@dataclass(frozen=True, slots=True)
class RcptTo:
    """``RCPT TO:<address> params``."""

    address: str
    params: dict[str, str | bool]


@dataclass(frozen=True, slots=True)
class Data:
    """``DATA``: a 354 reply switches the core to reading the message."""


@dataclass(frozen=True, slots=True)
class Bdat:
    """A whole ``BDAT size [LAST]`` chunk has been read (RFC 3030).

    ``first`` is true for the first chunk of a transaction (run the DATA
    checks then).  On the last chunk ``data`` is the whole message, or
    ``error`` the reply that refuses it (e.g. size exceeded).
    """

    size: int
    last: bool
    first: bool
    data: bytes | None = None
    error: Reply | None = None


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The end of DATA was read: ``data`` is the unstuffed message.

    When the core refuses the message itself (over the size limit, bare
    CR/LF in strict mode) ``data`` is ``None`` and ``error`` is the reply to
    send, after the driver has had a chance to see it.
    """

    data: bytes | None
    error: Reply | None = None


@dataclass(frozen=True, slots=True)
class Rset:
    """``RSET``."""


@dataclass(frozen=True, slots=True)
class Noop:
    """``NOOP [string]``."""

    arg: str


@dataclass(frozen=True, slots=True)
class Quit:
    """``QUIT``."""


@dataclass(frozen=True, slots=True)
class UnknownCommand:
    """A syntactically plausible verb the core does not implement.

    The driver may implement it (python-slimta's custom handler methods);
    otherwise it answers ``500 5.5.2``.
    """

    verb: str
    arg: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed the connection (or the session ended)."""


Event = (
    Greeting
    | Ehlo
    | Helo
    | StartTls
    | Auth
    | AuthResponse
    | MailFrom
    | RcptTo
    | Data
    | Bdat
    | MessageReceived
    | Rset
    | Noop
    | Quit
    | UnknownCommand
    | ConnectionClosed
)


# -- limits and state --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpLimits:
    """Every limit of a server session, in one place.

    Attributes:
        max_line_length: longest command line, CRLF included (RFC 5321
            4.5.3.1.4: 512).
        max_auth_line_length: longest AUTH line or SASL response (RFC 4954
            4: 12288).
        max_message_size: largest message in octets after unstuffing
            (Postfix's default ``message_size_limit``); ``None`` for no limit.
        max_recipients: accepted recipients per transaction (RFC 5321
            4.5.3.1.8 asks for at least 100; Postfix uses 1000).
        max_errors: error replies before the session is closed with 421
            (reset whenever a message is accepted).
        max_junk_commands: NOOP/RSET/VRFY/unknown commands before 421
            (reset whenever a message is accepted).
        max_auth_failures: failed AUTH attempts before 421.
        max_commands: commands in one session before 421.
        bare_line_endings: ``"reject"`` (550 5.5.2) or ``"normalize"`` (turn
            bare CR and LF into CRLF) for messages containing them.
    """

    max_line_length: int = 512
    max_auth_line_length: int = 12288
    max_message_size: int | None = 10240000
    max_recipients: int = 1000
    max_errors: int = 20
    max_junk_commands: int = 100
    max_auth_failures: int = 3
    max_commands: int = 100000
    bare_line_endings: str = "reject"

    def __post_init__(self) -> None:
        if self.bare_line_endings not in ("reject", "normalize"):
            raise ValueError(
                f"bare_line_endings must be 'reject' or 'normalize', not {self.bare_line_endings!r}"
            )
        if self.max_line_length < 16:
            raise ValueError("max_line_length must be at least 16")


class Phase(enum.Enum):
    """Where the session stands in a mail transaction."""

    #: Banner not sent yet.
    GREETING = "greeting"
    #: The banner was a refusal (e.g. 554): only QUIT is served (RFC 5321 3.1).
    REFUSED = "refused"
    #: Banner sent, no EHLO/HELO yet.
    CONNECTED = "connected"
    #: Greeted, no transaction open.
    IDLE = "idle"
    #: MAIL accepted.
    MAIL = "mail"
    #: At least one RCPT accepted.
    RCPT = "rcpt"
    #: BDAT chunks are being accepted.
    BDAT = "bdat"
    #: 221 or 421 sent: nothing more is read.
    CLOSED = "closed"


class InputMode(enum.Enum):
    """How the next received bytes are read."""

    COMMAND = "command"
    DATA = "data"
    BDAT = "bdat"
    AUTH = "auth"
    TLS = "tls"
