"""A tiny driver for the sans-IO server core, used by the protocol tests.

:class:`Driver` feeds bytes to a :class:`ServerConnection`, answers every
event with a default reply (the one a permissive server would give), and
records the events and the bytes written back.  :func:`run` and
:func:`run_split` run a byte script fed whole and split at one offset, so a
test can assert that framing never depends on how TCP cut the stream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from slimta.smtp.extensions import Extensions
from slimta.smtp.protocol import (
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
    Quit,
    RcptTo,
    Rset,
    ServerConnection,
    SmtpLimits,
    StartTls,
    UnknownCommand,
)
from slimta.smtp.reply import Reply

# Reply codes, named as the tests read them.
READY = "220"
CLOSING = "221"
AUTH_OK = "235"
OK = "250"
AUTH_CONTINUE = "334"
START_INPUT = "354"
SHUTTING_DOWN = "421"
TOO_MANY_RECIPIENTS = "452"
UNRECOGNIZED = "500"
SYNTAX_ARGS = "501"
BAD_SEQUENCE = "503"
PARAM_NOT_IMPLEMENTED = "504"
REJECTED = "550"
EXCEEDED_STORAGE = "552"
MAILBOX_NAME_NOT_ALLOWED = "553"
TRANSACTION_FAILED = "554"
PARAMS_NOT_RECOGNIZED = "555"
ENCRYPTION_REQUIRED = "538"

Answer = Callable[[Event], Reply | None]


def default_reply(event: Event) -> Reply:
    """The reply a permissive server gives to ``event``."""
    if isinstance(event, Greeting):
        return Reply("220", "mx.test ESMTP")
    if isinstance(event, Ehlo | Helo | MailFrom | RcptTo | Rset | Noop):
        return Reply("250", "2.0.0 Ok")
    if isinstance(event, Data):
        return Reply("354", "End data with <CR><LF>.<CR><LF>")
    if isinstance(event, MessageReceived | Bdat):
        if event.error is not None:
            return event.error
        return Reply("250", "2.6.0 Message accepted")
    if isinstance(event, Quit):
        return Reply("221", "2.0.0 Bye")
    if isinstance(event, Auth | AuthResponse):
        return Reply("235", "2.7.0 Authentication successful")
    if isinstance(event, StartTls):
        return Reply("220", "2.0.0 Ready to start TLS")
    if isinstance(event, UnknownCommand):
        return Reply("500", "5.5.2 Syntax error, command unrecognized")
    raise AssertionError(f"unexpected event {event!r}")


def all_extensions() -> Extensions:
    """Every extension the core knows how to check."""
    ext = Extensions()
    for name in ("8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "STARTTLS"):
        ext.add(name)
    ext.add("SIZE", 10240000)
    ext.add("AUTH", "PLAIN LOGIN CRAM-MD5")
    return ext


def make_conn(
    limits: SmtpLimits | None = None,
    extensions: Extensions | None = None,
    *,
    encrypted: bool = False,
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5"),
) -> ServerConnection:
    return ServerConnection(
        extensions if extensions is not None else all_extensions(),
        limits,
        encrypted=encrypted,
        auth_mechanisms=auth_mechanisms,
    )


@dataclass
class Driver:
    """Feeds chunks to ``conn`` and answers each event.

    ``answer`` may return a reply for an event, or ``None`` to fall back to
    :func:`default_reply`.  With ``tls=True`` a ``220`` to STARTTLS is
    followed at once by :meth:`ServerConnection.tls_established` (as if the
    handshake succeeded before any more bytes were read).
    """

    conn: ServerConnection = field(default_factory=make_conn)
    answer: Answer | None = None
    tls: bool = True
    events: list[Event] = field(default_factory=list)
    output: bytearray = field(default_factory=bytearray)
    #: One entry per feed: the bytes data_to_send() returned after it.
    writes: list[bytes] = field(default_factory=list)
    #: The largest _buf seen right after receive_data() in command mode,
    #: minus the size of the chunk just fed.
    buf_excess: int = 0

    def feed(self, chunk: bytes) -> None:
        """Feed a non-empty chunk (an empty one is ignored; see :meth:`eof`)."""
        if self.conn.closed or not chunk:
            return
        was_command = self.conn.mode in (InputMode.COMMAND, InputMode.AUTH)
        limit = (
            self.conn.limits.max_auth_line_length
            if self.conn.mode is InputMode.AUTH
            else self.conn.limits.max_line_length
        )
        self.conn.receive_data(chunk)
        if was_command:
            self.buf_excess = max(self.buf_excess, len(self.conn._buf) - len(chunk) - limit)
        self.drain()

    def eof(self) -> None:
        """The client closes the connection."""
        self.conn.receive_data(b"")
        self.drain()

    def drain(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert not isinstance(event, type(NEED_DATA))
            self.events.append(event)
            if isinstance(event, ConnectionClosed):
                break
            reply = self.answer(event) if self.answer is not None else None
            if reply is None:
                reply = default_reply(event)
            conn.send_reply(reply)
            if self.tls and isinstance(event, StartTls) and reply.code == "220":
                conn.tls_established()
        data = conn.data_to_send()
        self.writes.append(data)
        self.output += data

    # -- views ---------------------------------------------------------------

    def replies(self) -> list[bytes]:
        """The output split into lines (CRLF kept)."""
        return [line + b"\r\n" for line in bytes(self.output).split(b"\r\n")[:-1]]

    def codes(self) -> list[str]:
        """The code of each final reply line, in order."""
        return [line[:3].decode() for line in self.replies() if line[3:4] == b" "]

    def of(self, kind: type) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def run(script: bytes | Iterable[bytes], **kwargs: object) -> Driver:
    """Feed ``script`` (bytes, or a sequence of chunks) and return the driver."""
    driver = Driver(**kwargs)  # type: ignore[arg-type]
    driver.drain()  # the Greeting
    chunks = [script] if isinstance(script, bytes) else list(script)
    for chunk in chunks:
        driver.feed(chunk)
    return driver


def run_split(script: bytes, offset: int, factory: Callable[[], Driver]) -> Driver:
    driver = factory()
    driver.drain()
    driver.feed(script[:offset])
    driver.feed(script[offset:])
    return driver


def check_every_split(script: bytes, factory: Callable[[], Driver] | None = None) -> Driver:
    """Run ``script`` whole and split at every offset; all runs must agree.

    Returns the whole-fed driver for further assertions.
    """
    make = factory or Driver
    whole = make()
    whole.drain()
    whole.feed(script)
    assert_well_formed(bytes(whole.output))
    for offset in range(1, len(script)):
        split = run_split(script, offset, make)
        assert split.events == whole.events, f"events differ when split at {offset}"
        assert bytes(split.output) == bytes(whole.output), f"output differs when split at {offset}"
    return whole


REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]{0,508}\r\n\Z")


def assert_well_formed(output: bytes) -> None:
    """Every reply line is ``code[ -]text CRLF`` with no stray control octets."""
    assert output == b"" or output.endswith(b"\r\n"), output[-40:]
    for line in output.split(b"\r\n")[:-1]:
        line += b"\r\n"
        assert REPLY_LINE.match(line), line
        assert not re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line[:-2]), line
