"""The sans-IO core of an SMTP (or LMTP) client session.

Theory of operation: the client side of SMTP is simpler than the server's.
The driver (:mod:`slimta.smtp.client`) queues commands with
:meth:`ClientConnection.command` (or message data with
:meth:`ClientConnection.message` / :meth:`ClientConnection.bdat`); each one
registers the :class:`~slimta.smtp.reply.Reply` object that its answer will
fill in.  Queued bytes leave with :meth:`ClientConnection.data_to_send` -- a
whole PIPELINING group in one write -- and answers are read back with
:meth:`ClientConnection.receive_data` / :meth:`ClientConnection.next_reply`,
in order, into those Reply objects.

Defences kept here:

* Reply grammar is strict: three digits from 2xx to 5xx, the same code on
  every line of a multi-line reply, lines of bounded length and a bounded
  number of lines.  Anything else raises :class:`~slimta.smtp.BadReply`.
* Commands carrying CR, LF or NUL are refused before anything is sent, so
  an address taken from elsewhere cannot inject a command.
* Message data is canonicalised: bare CR and LF become CRLF and every line
  starting with ``.`` is dot-stuffed, so no message can end early at the
  next hop (outbound SMTP smuggling).
* :meth:`ClientConnection.discard_received` drops whatever the server sent
  beyond the reply to STARTTLS, before the TLS handshake (response
  injection, CVE-2011-0411 class, client side).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final

from slimta.smtp import BadReply
from slimta.smtp.reply import Reply

__all__ = ["NEED_DATA", "ClientConnection", "dot_stuff"]

NEED_DATA: Final = None

_CODE = re.compile(rb"[2-5][0-9][0-9]\Z")
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
_FORBIDDEN_IN_COMMAND = re.compile(r"[\r\n\x00]")


def dot_stuff(*parts: bytes) -> bytes:
    r"""Return message data ready to send after DATA, ``.\r\n`` included.

    The data is :func:`message_lines`, with a ``.`` starting any line doubled
    and the end-of-data line added.
    """
    data = message_lines(*parts)
    if data[:1] == b".":
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def message_lines(*parts: bytes) -> bytes:
    """Join ``parts`` as the message goes out, over DATA or BDAT alike.

    Bare CR and LF become CRLF, and data that does not end in CRLF gets
    one (empty data stays empty): both commands then deliver the same
    bytes, which a DKIM signature made before sending relies on.
    """
    data = canonical_line_endings(*parts)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def canonical_line_endings(*parts: bytes) -> bytes:
    """Join ``parts`` with every bare CR or LF turned into CRLF."""
    data = b"".join(parts)
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:
        data = _BARE_EOL.sub(b"\r\n", data)
    return data


class ClientConnection:
    """One client session, without I/O.

    Args:
        max_line_length: longest reply line accepted, CRLF included.
        max_lines: most lines accepted in one multi-line reply.
    """

    def __init__(self, max_line_length: int = 2048, max_lines: int = 256) -> None:
        self.max_line_length = max_line_length
        self.max_lines = max_lines
        self._buf = bytearray()
        self._scan_from = 0
        self._out: list[bytes] = []
        self._waiting: deque[Reply] = deque()
        self._lines: list[str] = []
        self._code: bytes | None = None
        self.eof = False

    # -- outgoing ---------------------------------------------------------------

    def expect(self, reply: Reply) -> None:
        """Wait for a reply that no command of ours asks for (the banner)."""
        self._waiting.append(reply)

    def command(self, verb: str, arg: str | None, reply: Reply) -> None:
        """Queue ``VERB arg`` and the reply object its answer will fill.

        Raises:
            ValueError: the command contains CR, LF or NUL.
        """
        line = f"{verb} {arg}" if arg else verb
        if _FORBIDDEN_IN_COMMAND.search(line):
            raise ValueError(f"CR, LF or NUL in SMTP command: {line[:60]!r}")
        self._out.append(line.encode("utf-8") + b"\r\n")
        self._waiting.append(reply)

    def message(self, parts: tuple[bytes, ...], replies: list[Reply]) -> None:
        """Queue message data after DATA; ``replies`` get the answer(s).

        SMTP servers answer once; LMTP servers once per accepted recipient.
        """
        self._out.append(dot_stuff(*parts))
        self._waiting.extend(replies)

    def bdat(self, chunk: bytes, last: bool, reply: Reply) -> None:
        """Queue one BDAT chunk (RFC 3030) and its reply object."""
        header = f"BDAT {len(chunk)} LAST\r\n" if last else f"BDAT {len(chunk)}\r\n"
        self._out.append(header.encode("ascii"))
        if chunk:
            self._out.append(chunk)
        self._waiting.append(reply)

    def data_to_send(self) -> bytes:
        """Drain the queued bytes (a whole pipelined group)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def pending(self) -> int:
        """How many replies are still awaited."""
        return len(self._waiting)

    # -- incoming ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; ``b""`` means it closed the connection."""
        if not data:
            self.eof = True
            return
        self._buf += data

    @property
    def has_buffered_data(self) -> bool:
        """True if received bytes are waiting to be parsed."""
        return bool(self._buf)

    def discard_received(self) -> int:
        """Drop every buffered byte (after the reply to STARTTLS); returns how many."""
        dropped = len(self._buf)
        self._buf.clear()
        self._scan_from = 0
        return dropped

    def next_reply(self) -> Reply | None:
        """Fill and return the oldest awaited reply, or ``None`` for more data.

        Raises:
            BadReply: the server sent something that is not a valid reply,
                or a reply nobody asked for.
        """
        while True:
            end = self._buf.find(b"\n", self._scan_from)
            if end < 0:
                if len(self._buf) > self.max_line_length:
                    raise BadReply(bytes(self._buf[:80]))
                self._scan_from = len(self._buf)
                return NEED_DATA
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scan_from = 0
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self._take_line(line)
            if reply is not None:
                return reply

    def _take_line(self, line: bytes) -> Reply | None:
        if len(line) + 2 > self.max_line_length:
            raise BadReply(line[:80])
        code = line[:3]
        sep = line[3:4]
        if not _CODE.match(code) or sep not in (b" ", b"-", b""):
            raise BadReply(line[:80])
        if self._code is not None and code != self._code:
            raise BadReply(line[:80])
        self._code = code
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if len(self._lines) > self.max_lines:
            raise BadReply(line[:80])
        if sep == b"-":
            return None
        if not self._waiting:
            raise BadReply(line[:80])
        reply = self._waiting.popleft()
        reply.code = code.decode("ascii")
        reply.message = "\r\n".join(self._lines)
        self._lines = []
        self._code = None
        return reply
