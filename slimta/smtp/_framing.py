"""Framing for :class:`slimta.smtp.protocol.ServerConnection`: lines, DATA, BDAT.

Theory of operation
-------------------
This is where the session's bytes are cut up, before any meaning is given to
them: a command line (bounded by the line limit), a DATA message (ended only
by ``<CRLF>.<CRLF>``, dot-unstuffed, bare CR/LF refused or normalised) and a
BDAT chunk (exactly its announced size, never parsed).  It lives apart from
:mod:`slimta.smtp.protocol` so the state machine there reads on its own, and
apart from :mod:`slimta.smtp._commands` because framing is about octets and
limits, not command syntax.

:class:`_Framing` is a mixin that :class:`~slimta.smtp.protocol.ServerConnection`
inherits: the methods run on the connection itself, with no call layer added
on the hot path (every command line and message goes through here).  The
annotations below only tell the type checker which attributes of the
connection these methods use; they create nothing at run time.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from slimta.smtp._events import (
    NEED_DATA,
    Bdat,
    Event,
    InputMode,
    MessageReceived,
    Phase,
    SmtpLimits,
    _NeedData,
)
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.smtp.extensions import Extensions

CRLF: Final = b"\r\n"
END_OF_DATA: Final = b"\r\n.\r\n"

_BDAT_ARGS = re.compile(r"([0-9]{1,18})(?: +(LAST))? *\Z", re.IGNORECASE)
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
# Returned by _read_line for a line the core has already answered (too long).
_ANSWERED: Final = b"<answered>"


def _reply(code: str, message: str) -> Reply:
    return Reply(code, message)


class _Framing:
    """Cutting lines, DATA messages and BDAT chunks out of the input buffer."""

    limits: SmtpLimits
    phase: Phase
    mode: InputMode
    extensions: Extensions
    _buf: bytearray
    _scan_from: int
    _discarding_line: bool
    _message: bytearray
    _message_too_big: bool
    _bdat_remaining: int
    _bdat_header: tuple[int, bool, bool, bool] | None

    if TYPE_CHECKING:

        def _refuse(self, code: str, message: str) -> None: ...

        def take_message(self) -> bytes: ...

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


def _too_big_reply(limit: int | None) -> Reply:
    return _reply("552", f"5.3.4 Message size exceeds fixed limit of {limit} octets")
