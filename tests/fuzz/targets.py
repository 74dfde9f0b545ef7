"""Fuzz targets for the SMTP protocol cores (server and client reply parser).

Each target takes one byte string and checks invariants; it raises
``AssertionError`` (or any unexpected exception) on a bug.  They are plain
functions, so the same inputs run under atheris (``fuzz_smtp.py``, coverage
guided), under hypothesis and as a corpus replay in the normal test suite
(``test_fuzz_corpus.py``).

Input format (both targets): the first octet chooses the chunk size the rest
is fed in (1 to 64 octets, so every split point gets exercised), the second
a bit mask that decides which commands the simulated driver refuses; the
remainder is the byte stream from the peer.
"""

from __future__ import annotations

import re

from slimta.smtp import BadReply
from slimta.smtp._clientcore import ClientConnection
from slimta.smtp.extensions import Extensions
from slimta.smtp.protocol import (
    NEED_DATA,
    Auth,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    Greeting,
    MessageReceived,
    Quit,
    ServerConnection,
    SmtpLimits,
    StartTls,
)
from slimta.smtp.reply import Reply

__all__ = ["fuzz_client", "fuzz_server"]

_REPLY_LINE = re.compile(rb"[2-5][0-9][0-9][ -][^\r\n]{0,1020}\r\n\Z")
LIMITS = SmtpLimits(max_message_size=4096, max_recipients=20, max_errors=20)


def _split(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < 2:
        return 1, 0, data
    return data[0] % 64 + 1, data[1], data[2:]


def _answer(event: object, index: int, mask: int) -> Reply:
    refuse = bool(mask >> (index % 8) & 1)
    if isinstance(event, Greeting):
        return Reply("220", "fuzz ESMTP")
    if isinstance(event, StartTls):
        return Reply("454", "4.7.0 TLS not available") if refuse else Reply("220", "2.7.0 Go ahead")
    if isinstance(event, Auth | AuthResponse):
        return Reply("334", "") if not refuse else Reply("535", "5.7.8 No")
    if isinstance(event, Data):
        return Reply("554", "5.5.1 No") if refuse else Reply("354", "Go ahead")
    if isinstance(event, Quit):
        return Reply("221", "2.0.0 Bye")
    if refuse:
        return Reply("550", "5.7.1 Refused")
    return Reply("250", "2.0.0 Ok")


def fuzz_server(data: bytes) -> None:
    """Drive a :class:`ServerConnection` with ``data``; check its invariants."""
    size, mask, stream = _split(data)
    extensions = Extensions()
    for name in ("8BITMIME", "PIPELINING", "SMTPUTF8", "CHUNKING", "STARTTLS", "DSN"):
        extensions.add(name)
    extensions.add("AUTH", "PLAIN LOGIN")
    conn = ServerConnection(extensions, LIMITS, auth_mechanisms=("PLAIN", "LOGIN"))
    offset = index = 0
    # Bounded: every event consumes input or ends the session, and each
    # chunk is fed once; the bound only guards against a core that loops.
    for _ in range(len(stream) * 4 + 64):
        event = conn.next_event()
        if event is NEED_DATA:
            _check_output(conn.data_to_send())
            assert len(conn._buf) <= LIMITS.max_auth_line_length + 2 * 4096 + 64 + size or conn.in_data
            if offset >= len(stream):
                conn.receive_data(b"")
            else:
                conn.receive_data(stream[offset : offset + size])
                offset += size
            continue
        if isinstance(event, ConnectionClosed):
            _check_output(conn.data_to_send())
            return
        _check_event(event)
        reply = _answer(event, index, mask)
        index += 1
        conn.send_reply(reply)
        if isinstance(event, StartTls) and reply.code == "220":
            _check_output(conn.data_to_send())
            conn.tls_established()
    raise AssertionError("the core did not finish")


def _check_event(event: object) -> None:
    if isinstance(event, MessageReceived) and event.data is not None:
        raw = event.data
        # Strict mode: an accepted message holds only CRLF line ends and
        # never an unstuffed end-of-data line.
        assert raw.count(b"\r") == raw.count(b"\r\n") == raw.count(b"\n"), raw
        assert LIMITS.max_message_size is not None
        assert len(raw) <= LIMITS.max_message_size
    if isinstance(event, Bdat) and event.data is not None:
        assert LIMITS.max_message_size is not None
        assert len(event.data) <= LIMITS.max_message_size


def _check_output(out: bytes) -> None:
    for line in out.splitlines(keepends=True):
        assert _REPLY_LINE.match(line), out


def fuzz_client(data: bytes) -> None:
    """Feed ``data`` as server replies to a :class:`ClientConnection`."""
    size, mask, stream = _split(data)
    conn = ClientConnection(max_line_length=512, max_lines=16)
    expected = [Reply() for _ in range(mask % 8 + 1)]
    for reply in expected:
        conn.expect(reply)
    offset = 0
    got = 0
    while offset < len(stream) and got < len(expected):
        conn.receive_data(stream[offset : offset + size])
        offset += size
        try:
            while got < len(expected) and conn.next_reply() is not None:
                reply = expected[got]
                got += 1
                assert reply.code is not None
                assert re.fullmatch(r"[2-5][0-9][0-9]", reply.code), reply
        except BadReply:
            return
        assert len(conn._buf) <= 512 * 17 + size if hasattr(conn, "_buf") else True
