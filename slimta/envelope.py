"""The :class:`Envelope`: one message plus the SMTP envelope around it.

Every part of slimta (edge, queue, relay, policies) passes messages around as
:class:`Envelope` objects: the envelope sender and recipients, the header
section as an :class:`email.message.Message`, and the body as raw ``bytes``.

Theory of operation
-------------------

A mail server mostly moves messages without looking inside them, and bodies
can be tens of megabytes, so the body is never handed to the :mod:`email`
parser.  :meth:`Envelope.parse` finds the end of the header section with
``bytes.find`` (the first empty line, ``CRLF CRLF`` or ``LF LF``), gives only
the header section to the stdlib parser (policy ``compat32``, as
python-slimta 4.0 did, so header values stay plain ``str``), and keeps the
body as one ``bytes`` slice.

Header bytes are decoded as ASCII with ``surrogateescape`` -- the same choice
the stdlib makes in :func:`email.message_from_bytes` -- so 8-bit and UTF-8
headers (RFC 6532) survive :meth:`~Envelope.parse` then
:meth:`~Envelope.flatten` byte for byte.  :meth:`~Envelope.flatten` writes
the headers itself rather than through :class:`email.generator.Generator`,
because the generator re-folds long lines and would change bytes that must
pass through untouched.

The stdlib parser silently drops a few kinds of malformed lines (a
continuation line before any header, a ``From`` line in the middle, a line
starting with ``:``).  To never lose data, :meth:`~Envelope.parse` first
checks the header section line by line with one regular expression; the
first line that is not a well-formed header ends the header section, and it
and everything after it become part of the body.  That is also how a
reader of RFC 5322 treats such a message.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.encoders
import functools
import re
from collections.abc import Callable, Iterable
from email.generator import BytesGenerator
from email.header import Header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from io import BytesIO
from typing import Any

from slimta.core import SlimtaError

__all__ = ["Envelope", "EnvelopeError", "EnvelopeParseError", "EnvelopeTypeError"]


class EnvelopeError(SlimtaError, ValueError):
    """The envelope's content cannot be used as asked.

    Raised, for example, when :meth:`Envelope.flatten` meets a header value
    with a line break that is not followed by whitespace (which would let
    the value inject a header of its own), or when an ``encoder`` given to
    :meth:`Envelope.encode_7bit` leaves 8-bit data behind.
    """


class EnvelopeParseError(EnvelopeError):
    """Raw message data given to :meth:`Envelope.parse` cannot be parsed."""


class EnvelopeTypeError(SlimtaError, TypeError):
    """An :class:`Envelope` method was given an argument of the wrong type."""


#: A callable from :mod:`email.encoders` (or one like them): it takes a
#: message part whose payload is raw text and transfer-encodes it in place.
Encoder = Callable[[Message], None]

# A header field name is any printable ASCII except the colon (RFC 5322 s2.2).
_NAME = rb"[\x21-\x39\x3b-\x7e]+"
# Well-formed header lines from the start of the header section: a name and a
# colon, then continuation lines that start with whitespace.  A line ends in
# LF or CRLF; a CR anywhere else makes the line malformed (the stdlib parser
# would split the line there).  The last line may lack its LF when there is
# no body at all.  Possessive quantifiers keep the match linear even on a
# megabyte-long line.
_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)(?:\r?\n)?")
# A header section that _header_line() would write back unchanged: CRLF line
# endings, one space after each colon before a value (none when the value
# starts on a continuation line), continuation lines as they are.
_CANONICAL_FIELD = (
    rb"[\x21-\x39\x3b-\x7e]+:"
    rb"(?: (?![ \t\r])[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*| \r\n(?![ \t])|\r\n(?:[ \t][^\r\n]*\r\n)+)"
)
_CANONICAL_SECTION = re.compile(rb"(?:" + _CANONICAL_FIELD + rb")*\Z")
_HEADER_LINES = re.compile(rb"(?:" + _NAME + rb":[^\r\n]*+(?:\r?\n|\Z)(?:[ \t][^\r\n]*+(?:\r?\n|\Z))*+)*+")
# An LF not preceded by CR.  The pattern starts with a literal, so the regex
# engine skips ahead with a fast scan for LF; on a CRLF body this is about
# twice as fast as comparing ``count(b"\\n")`` with ``count(b"\\r\\n")``.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_EMPTY_LINE = re.compile(rb"\n\r?\n")
_NAME_STR = re.compile(_NAME.decode("ascii") + r"\Z")
_ANY_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# After normalising line breaks, each one must start a continuation line.
_BAD_FOLD = re.compile(r"\r\n(?![ \t])")
# compat32 with CRLF line ends: used only for values that must be encoded
# into RFC 2047 words (``Header`` objects and non-ASCII text set by code).
_FOLD_POLICY = compat32.clone(linesep="\r\n")
# Serialising a Message for parse_msg: no re-folding of long header lines.
_GEN_POLICY = compat32.clone(linesep="\r\n", max_line_length=0)


def _blank_line(data: bytes) -> tuple[int, int]:
    """Return (end of header section, start of body) for raw message data.

    The header section ends at the first empty line, whether it is ``CRLF``
    or a bare ``LF``.  Without an empty line everything is header section.
    """
    if data.startswith(b"\n"):
        return 0, 1
    if data.startswith(b"\r\n"):
        return 0, 2
    # One left-to-right search that stops at the first empty line, so its
    # cost is the size of the header section.  (Two ``bytes.find`` calls for
    # LF LF and LF CRLF would each scan a whole CRLF-only body.)
    match = _EMPTY_LINE.search(data)
    if match is None:
        return len(data), len(data)
    return match.start() + 1, match.end()


def _crlf(body: bytes) -> bytes:
    """Return ``body`` with every bare LF turned into CRLF.

    A body that is already clean is returned as the same object, so the
    common case costs one scan and no copy.
    """
    if _BARE_LF.search(body) is None:
        return body
    if b"\r" not in body:
        return body.replace(b"\n", b"\r\n")
    # Folding CRLF to LF first means existing CRLFs are not doubled.
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=64)
def _field_pattern(lower_name: str) -> re.Pattern[bytes]:
    """Matches the start of every ``lower_name:`` field of a header section.

    Cached: :meth:`Envelope.count_headers` runs for every received message
    (the mail-loop check), and building the pattern cost more than using it.
    """
    return re.compile(rb"(?:\A|\n)" + re.escape(lower_name.encode("ascii")) + rb":", re.IGNORECASE)


def _parse_fields(raw: bytes) -> Message:
    """Build the Message of a validated header section (see ``_HEADER_LINES``).

    Each field is "name:value" plus folded continuation lines; storing them
    with set_raw gives exactly what the stdlib parser (compat32) builds, at a
    fraction of its cost.
    """
    headers = Message(policy=compat32)
    if raw:
        text = raw.decode("ascii", "surrogateescape")
        for field in _FIELD.finditer(text):
            headers.set_raw(field.group(1), field.group(2).lstrip(" \t"))
    headers.set_payload("")
    return headers


def _prependable(value: object) -> bool:
    """True if ``value`` reads back unchanged once written in front of raw fields.

    ASCII, no surrounding whitespace, and line breaks (if any) only as CRLF:
    the parsed path keeps a bare CR or LF as given, the raw one would not.
    """
    if not isinstance(value, str) or not value.isascii() or value != value.strip(" \t"):
        return False
    plain = value.replace("\r\n", "") if "\r\n" in value else value
    return "\r" not in plain and "\n" not in plain


def _header_line(name: object, value: object) -> str:
    """Serialise one header field, CRLF-terminated, as text.

    Parsed values (ASCII, with surrogates standing in for 8-bit bytes) are
    written exactly as they came in.  ``Header`` objects and values holding
    real non-ASCII characters -- only code puts those there -- are encoded
    to RFC 2047 words by the stdlib, as python-slimta 4.0 did.
    """
    if not isinstance(name, str) or not _NAME_STR.match(name):
        raise EnvelopeError(f"invalid header field name: {name!r}")
    if isinstance(value, Header) or (
        isinstance(value, str) and not value.isascii() and not _has_surrogates(value)
    ):
        folded: Any = value  # fold() is typed for str but takes Header too
        return _FOLD_POLICY.fold(name, folded)
    if not isinstance(value, str):
        raise EnvelopeTypeError(f"header {name!r} has a value of type {type(value).__name__}, not str")
    if "\r" in value or "\n" in value:
        value = _ANY_LINE_BREAK.sub("\r\n", value)
        if _BAD_FOLD.search(value):
            raise EnvelopeError(f"header {name!r} has a line break not followed by whitespace: {value!r}")
        if value.startswith("\r\n"):
            # The value began on the next line ("Name:" CRLF WSP ...); adding
            # a space after the colon would change the header's bytes.
            return f"{name}:{value}\r\n"
    return f"{name}: {value}\r\n"


def _has_surrogates(text: str) -> bool:
    """Tell whether ``text`` holds surrogate escapes for 8-bit bytes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_8bit_field(name: str, value: object) -> bool:
    """Tell whether a stored header field is not pure ASCII.

    ``Header`` objects are left out: :meth:`Envelope.flatten` writes them as
    7-bit RFC 2047 words.
    """
    return not name.isascii() or (isinstance(value, str) and not value.isascii())


def _as_bytes(data: object, what: str) -> bytes:
    """Return ``data`` as ``bytes`` (no copy if it already is)."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise EnvelopeTypeError(f"{what} must be bytes, not {type(data).__name__}")


class Envelope:
    """A message with its SMTP envelope and information about where it came from.

    Args:
        sender: The envelope sender (``MAIL FROM`` address); ``None`` when not
            known yet, ``''`` for the null sender of a bounce.
        recipients: The envelope recipients (``RCPT TO`` addresses).  The
            list is copied.
        headers: The header section.  :meth:`parse` fills it in.
        message: The message body as bytes, everything after the empty line
            that ends the header section.

    Raises:
        EnvelopeTypeError: ``message`` is not bytes or ``headers`` is not a
            :class:`~email.message.Message`.

    Attributes:
        sender: The envelope sender address.
        recipients: List of envelope recipient addresses.
        message: The body bytes, or ``None`` before :meth:`parse`.
        client: What is known about the client that sent the message, with
            the keys ``ip``, ``host`` (reverse DNS of the IP), ``name`` (as
            given in ``EHLO``/``HELO``), ``protocol`` (e.g. ``'ESMTPS'``) and
            ``auth`` (the authenticated identity); each ``None`` until set.
        receiver: Host name of the slimta server that received the message.
        timestamp: When the message was received (a Unix timestamp).
    """

    def __init__(
        self,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        headers: Message | None = None,
        message: bytes | None = None,
    ) -> None:
        if headers is not None and not isinstance(headers, Message):
            raise EnvelopeTypeError(f"headers must be an email.message.Message, not {type(headers).__name__}")
        self.sender: str | None = sender
        self.recipients: list[str] = list(recipients) if recipients is not None else []
        # The header section is kept as the validated bytes received until
        # someone reads :attr:`headers`: a queued message that is relayed
        # unchanged never pays for (or holds in memory) a parsed Message.
        self._header_bytes: bytes | None = None
        self._headers: Message | None = headers
        self.message: bytes | None = None if message is None else _as_bytes(message, "message")
        self.client: dict[str, Any] = {
            "ip": None,
            "host": None,
            "name": None,
            "protocol": None,
            "auth": None,
        }
        self.receiver: str | None = None
        self.timestamp: float | None = None

    @property
    def headers(self) -> Message | None:
        """The header section, or ``None`` before :meth:`parse`.

        An :class:`email.message.Message` whose payload is unused; after
        :meth:`parse` it is built on first use.
        """
        raw = self._header_bytes
        if raw is not None:
            self._header_bytes = None
            self._headers = _parse_fields(raw)
        return self._headers

    @headers.setter
    def headers(self, value: Message | None) -> None:
        self._header_bytes = None
        self._headers = value

    def count_headers(self, name: str) -> int:
        """How many header fields are called ``name`` (case-insensitive).

        Cheap on a message whose headers were not parsed yet: the edge uses
        it to count ``Received`` fields (mail loops) without parsing.

        .. versionadded:: 0.1.0
        """
        raw = self._header_bytes
        if raw is not None:
            if not name.isascii():
                return 0  # field names are ASCII (RFC 5322 2.2)
            return len(_field_pattern(name.lower()).findall(raw))
        headers = self._headers
        return len(headers.get_all(name) or ()) if headers is not None else 0

    def __repr__(self) -> str:
        size = "no body" if self.message is None else f"{len(self.message)} body bytes"
        return (
            f"<Envelope at {id(self):#x}, sender={self.sender!r}, "
            f"{len(self.recipients)} recipient(s), {size}>"
        )

    # -- building ---------------------------------------------------------

    def parse(self, data: bytes) -> None:
        """Fill :attr:`headers` and :attr:`message` from raw message data.

        The header section ends at the first empty line (``CRLF CRLF`` or
        ``LF LF``); without one, the whole input is header section and the
        body is empty.  If a line in the header section is not a well-formed
        header, the header section ends before it and that line, with
        everything after it, becomes the body: no input byte is dropped.
        The body is kept exactly as given (line endings are normalised
        only by :meth:`flatten`).

        Args:
            data: The complete message, headers and body.  ``bytearray`` and
                ``memoryview`` are accepted and copied to ``bytes``.

        Raises:
            EnvelopeTypeError: ``data`` is not bytes-like (e.g. a ``str``).
            EnvelopeParseError: The header section cannot be parsed.
        """
        raw = _as_bytes(data, "data")
        header_end, body_start = _blank_line(raw)
        match = _HEADER_LINES.match(raw, 0, header_end)
        valid_end = match.end() if match else 0
        if valid_end < header_end:
            # A malformed line: it and the rest, separator included, is body.
            body_start = valid_end
        # The section was validated line by line above; it is parsed into a
        # Message only when :attr:`headers` is first read.
        self._headers = None
        self._header_bytes = raw[:valid_end]
        self.message = raw[body_start:]

    def parse_msg(self, msg: Message) -> None:
        """Fill :attr:`headers` and :attr:`message` from a parsed message.

        The message is serialised (without any mbox ``From`` line and
        without re-folding long headers) and then read with :meth:`parse`,
        so a multipart message's MIME structure becomes body bytes.

        Args:
            msg: The message, e.g. built with :mod:`email.mime` classes.

        Raises:
            EnvelopeTypeError: ``msg`` is not an :class:`email.message.Message`.
        """
        if not isinstance(msg, Message):
            raise EnvelopeTypeError(f"msg must be an email.message.Message, not {type(msg).__name__}")
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_GEN_POLICY).flatten(msg, unixfrom=False)
        self.parse(out.getvalue())

    def prepend_header(self, name: str, value: str) -> None:
        """Add a header field in front of all others (e.g. ``Received``).

        :class:`email.message.Message` can only append, but trace fields
        (RFC 5321 s4.4) go at the top.

        Args:
            name: The field name.
            value: The field value.
        """
        raw = self._header_bytes
        if raw is not None and _prependable(value):
            # Not parsed yet: put the field's bytes in front of the received
            # ones, as flatten() would write it, and keep the section unparsed
            # (a DKIM signature or Received field per message would otherwise
            # cost a full parse).  Anything unusual takes the parsed path.
            try:
                line = _header_line(name, value)
            except EnvelopeError:
                pass
            else:
                self._header_bytes = line.encode("ascii") + raw
                return
        if self.headers is None:
            self.headers = Message(policy=compat32)
        headers = self.headers
        # Message keeps its fields in the list ``_headers`` and offers no
        # insert; going through the policy stores the value as __setitem__ does.
        headers._headers.insert(0, headers.policy.header_store_parse(name, value))  # type: ignore[attr-defined]

    def copy(self, new_rcpts: Iterable[str] | None = None) -> Envelope:
        """Return a copy that can be changed without touching this envelope.

        Headers, recipients and client information are copied deeply; the
        body bytes are immutable and shared, so copying a large message
        costs no memory for its body.

        Args:
            new_rcpts: Recipients for the copy.  As in python-slimta 4.0,
                ``None`` or an empty list keeps this envelope's recipients.

        Returns:
            The new envelope.
        """
        new_env = copy.deepcopy(self)
        if new_rcpts:
            new_env.recipients = list(new_rcpts)
        return new_env

    # -- output -----------------------------------------------------------

    def flatten(self) -> tuple[bytes, bytes]:
        """Serialise the message for sending.

        Returns:
            ``(header_bytes, body_bytes)``.  The header bytes are every field
            in order, each ending in CRLF, followed by the empty line; parsed
            fields are written byte for byte as received (only the space
            after the colon and line endings are normalised).  The body has
            every bare LF turned into CRLF; a body that needs no change is
            returned without being copied.  Missing headers or body count
            as empty.

        Raises:
            EnvelopeError: A header name is invalid, or a value contains a
                line break not followed by whitespace.
            EnvelopeTypeError: :attr:`message` is not bytes.
        """
        body = b"" if self.message is None else _as_bytes(self.message, "message")
        raw = self._header_bytes
        if raw is not None and _CANONICAL_SECTION.match(raw):
            # Never parsed, and already exactly what serialising the parsed
            # fields would give: send the received bytes as they are.
            return raw + b"\r\n", _crlf(body)
        lines: list[str] = []
        if self.headers is not None:
            unixfrom = self.headers.get_unixfrom()
            if unixfrom:
                lines.append(unixfrom.rstrip("\r\n") + "\r\n")
            lines.extend(_header_line(name, value) for name, value in self.headers.raw_items())
        lines.append("\r\n")
        header_bytes = "".join(lines).encode("ascii", "surrogateescape")
        return header_bytes, _crlf(body)

    # -- 8-bit and internationalised content ------------------------------

    def has_8bit_body(self) -> bool:
        """Tell whether the body holds any byte above 127.

        Such a body needs ``BODY=8BITMIME`` (RFC 6152), or
        :meth:`encode_7bit` when the next hop does not offer it.

        Returns:
            ``True`` when the body is not pure ASCII.
        """
        return self.message is not None and not self.message.isascii()

    def has_8bit_headers(self) -> bool:
        """Tell whether any header field holds a byte above 127.

        Raw 8-bit or UTF-8 header fields (RFC 6532) cannot be made 7-bit by
        :meth:`encode_7bit`; a relay should offer them only to a server
        that supports ``8BITMIME`` (and ``SMTPUTF8`` for UTF-8).

        Returns:
            ``True`` when a header name or text value is not pure ASCII.
        """
        raw = self._header_bytes
        if raw is not None:
            # Not parsed yet (a relay asks this of every message): the
            # received bytes answer without building the Message.
            return not raw.isascii()
        if self.headers is None:
            return False
        return any(_is_8bit_field(name, value) for name, value in self.headers.raw_items())

    def is_8bit(self) -> bool:
        """Tell whether the message must be sent as 8-bit (``BODY=8BITMIME``).

        Returns:
            ``True`` when the body or the header section is not pure ASCII.
        """
        return self.has_8bit_body() or self.has_8bit_headers()

    def has_utf8_addresses(self) -> bool:
        """Tell whether the sender or a recipient is not pure ASCII.

        Such addresses (RFC 6531) can only be relayed to a server that
        offers ``SMTPUTF8``.

        Returns:
            ``True`` when any envelope address has a non-ASCII character.
        """
        if self.sender is not None and not self.sender.isascii():
            return True
        return any(not rcpt.isascii() for rcpt in self.recipients)

    def encode_7bit(self, encoder: Encoder | None = None) -> None:
        """Transfer-encode an 8-bit body so that it is 7-bit clean.

        Nothing happens when the body is already ASCII.  Otherwise:

        * A non-multipart message has its whole body encoded and its
          ``Content-Transfer-Encoding`` header replaced accordingly.
        * A ``multipart/*`` message is parsed in full with :mod:`email`; each
          leaf part with 8-bit content is encoded on its own (its
          ``Content-Transfer-Encoding`` replaced), 7-bit parts, the
          boundaries, preamble and epilogue are kept, and the top-level
          headers are left as they are.  This is much slower than the
          non-multipart case.

        Header fields are never changed beyond ``Content-Transfer-Encoding``:
        8-bit header values have no faithful 7-bit form (see
        :meth:`has_8bit_headers`).

        Args:
            encoder: A function from :mod:`email.encoders` (or one that works
                like them, taking a message part).  ``None`` or
                :func:`email.encoders.encode_base64` gives base64, and
                :func:`email.encoders.encode_quopri` quoted-printable; these
                two run directly on the body bytes.

        Raises:
            EnvelopeError: ``encoder`` left 8-bit data in the body.
        """
        if not self.has_8bit_body():
            return
        encode = email.encoders.encode_base64 if encoder is None else encoder
        headers = self.headers if self.headers is not None else Message(policy=compat32)
        self.headers = headers
        if headers.get_content_maintype() == "multipart" and self._encode_multipart(encode):
            return
        body = _crlf(self.message or b"")
        if encode is email.encoders.encode_base64:
            cte, new_body = "base64", base64.encodebytes(body).replace(b"\n", b"\r\n")
        elif encode is email.encoders.encode_quopri:
            # Text mode keeps the CRLF line breaks as real line breaks.
            cte, new_body = "quoted-printable", binascii.b2a_qp(body, istext=True)
        else:
            part = Message(policy=compat32)
            part.set_payload(body.decode("ascii", "surrogateescape"))
            encode(part)
            new_body = self._encoded_payload(part, encode)
            cte = str(part.get("Content-Transfer-Encoding", ""))
        del headers["Content-Transfer-Encoding"]
        if cte:
            headers["Content-Transfer-Encoding"] = cte
        self.message = new_body

    @staticmethod
    def _encoded_payload(part: Message, encode: Encoder) -> bytes:
        """Return the payload an encoder produced, as CRLF-terminated ASCII."""
        payload = part.get_payload()
        if not isinstance(payload, str) or not payload.isascii():
            raise EnvelopeError(f"encoder {encode!r} did not make the body 7-bit")
        return _crlf(payload.encode("ascii"))

    def _encode_multipart(self, encode: Encoder) -> bool:
        """Encode the 8-bit leaf parts of a multipart body.

        Returns ``False`` when the body does not parse as multipart (e.g. a
        missing boundary), so that the caller encodes it as one part.
        """
        header_bytes, body = self.flatten()
        whole = BytesParser(policy=compat32).parsebytes(header_bytes + body)
        if not whole.is_multipart():
            return False
        for part in whole.walk():
            payload = part.get_payload()
            if part.is_multipart() or not isinstance(payload, str) or payload.isascii():
                continue
            # Drop the old value first: the encoders add theirs, and with the
            # header gone they read the payload as the raw bytes it is.
            del part["Content-Transfer-Encoding"]
            encode(part)
            if not str(part.get_payload()).isascii():
                raise EnvelopeError(f"encoder {encode!r} did not make a MIME part 7-bit")
        out = BytesIO()
        BytesGenerator(out, mangle_from_=False, policy=_GEN_POLICY).flatten(whole, unixfrom=False)
        # Keep our own top-level headers; take only the regenerated body.
        data = out.getvalue()
        self.message = data[_blank_line(data)[1] :]
        return True
