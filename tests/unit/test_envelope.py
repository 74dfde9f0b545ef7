"""Unit tests for slimta.envelope: parsing, flattening, copying, 7-bit encoding."""

from __future__ import annotations

import base64
import binascii
import email
import email.encoders
import re
import time
import tracemalloc
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimta.core import SlimtaError
from slimta.envelope import Envelope, EnvelopeError, EnvelopeParseError, EnvelopeTypeError

MIB = 1024 * 1024
BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf(data: bytes) -> bytes:
    """Reference normalisation, written differently from the library's."""
    return BARE_LF.sub(b"\r\n", data)


def reference_body_start(data: bytes) -> int:
    """Where the body starts: after the first empty line, found line by line."""
    start = 0
    while start <= len(data):
        if data.startswith(b"\n", start):
            return start + 1
        if data.startswith(b"\r\n", start):
            return start + 2
        nl = data.find(b"\n", start)
        if nl < 0:
            return len(data)
        start = nl + 1
    return len(data)


def parsed(data: bytes) -> Envelope:
    env = Envelope()
    env.parse(data)
    return env


# -- construction -----------------------------------------------------------


def test_defaults() -> None:
    env = Envelope()
    assert env.sender is None
    assert env.recipients == []
    assert env.headers is None
    assert env.message is None
    assert env.client == {"ip": None, "host": None, "name": None, "protocol": None, "auth": None}
    assert env.receiver is None
    assert env.timestamp is None


def test_positional_arguments_follow_the_40_order() -> None:
    headers = Message()
    env = Envelope("s@example.com", ["r@example.com"], headers, b"body")
    assert (env.sender, env.recipients, env.headers, env.message) == (
        "s@example.com",
        ["r@example.com"],
        headers,
        b"body",
    )


def test_recipients_are_copied() -> None:
    rcpts = ["a@example.com"]
    env = Envelope("s@example.com", rcpts)
    rcpts.append("b@example.com")
    assert env.recipients == ["a@example.com"]


def test_client_dicts_are_not_shared() -> None:
    one, two = Envelope(), Envelope()
    one.client["ip"] = "192.0.2.1"
    assert two.client["ip"] is None


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"message": "text"}, "message"), ({"headers": {"Subject": "x"}}, "headers")],
)
def test_constructor_rejects_wrong_types(kwargs: dict[str, object], word: str) -> None:
    with pytest.raises(EnvelopeTypeError, match=word) as info:
        Envelope(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, SlimtaError)
    assert isinstance(info.value, TypeError)


def test_error_classes_derive_from_slimta_error() -> None:
    assert issubclass(EnvelopeParseError, EnvelopeError)
    assert issubclass(EnvelopeError, SlimtaError)
    assert issubclass(EnvelopeError, ValueError)


def test_repr_names_sender_and_sizes() -> None:
    env = Envelope("s@example.com", ["a@example.com", "b@example.com"], message=b"12345")
    text = repr(env)
    assert text.startswith("<Envelope at 0x")
    assert "'s@example.com'" in text
    assert "2 recipient(s)" in text
    assert "5 body bytes" in text
    assert "no body" in repr(Envelope())


# -- parse ------------------------------------------------------------------


def test_parse_splits_headers_and_body() -> None:
    env = parsed(b"From: a@example.com\r\nSubject: hi\r\n\r\nline one\r\nline two\r\n")
    assert env.headers is not None
    assert env.headers["From"] == "a@example.com"
    assert env.headers["Subject"] == "hi"
    assert env.headers.get_payload() == ""
    assert env.message == b"line one\r\nline two\r\n"


@pytest.mark.parametrize(
    ("data", "names", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody", ["A", "B"], b"body"),
        (b"A: 1\nB: 2\n\nbody", ["A", "B"], b"body"),
        (b"A: 1\r\nB: 2\n\r\nbody", ["A", "B"], b"body"),
        (b"A: 1\nB: 2\r\n\nbody", ["A", "B"], b"body"),
        (b"\r\nA: 1\r\n\r\nbody", [], b"A: 1\r\n\r\nbody"),
        (b"\nA: 1\n\nbody", [], b"A: 1\n\nbody"),
        (b"A: 1\r\n\r\n", ["A"], b""),
        (b"A: 1\r\n\r\n\r\n", ["A"], b"\r\n"),
        # The first empty line wins; later ones are body.
        (b"A: 1\n\nB: 2\n\nbody", ["A"], b"B: 2\n\nbody"),
    ],
)
def test_parse_finds_the_first_empty_line(data: bytes, names: list[str], body: bytes) -> None:
    env = parsed(data)
    assert env.headers is not None
    assert env.headers.keys() == names
    assert env.message == body


def test_parse_keeps_body_bytes_exactly() -> None:
    body = b"bare\nlf\r\ncr\ronly\r\r\n\x00\xff\xfe end"
    env = parsed(b"Subject: x\r\n\r\n" + body)
    assert env.message == body


def test_parse_accepts_bytearray_and_memoryview() -> None:
    data = b"Subject: x\r\n\r\nbody"
    assert parsed(bytearray(data)).message == b"body"
    assert parsed(memoryview(data)).message == b"body"  # type: ignore[arg-type]


@pytest.mark.parametrize("data", ["Subject: x\r\n\r\nbody", None, 42, ["x"]])
def test_parse_rejects_non_bytes(data: object) -> None:
    with pytest.raises(EnvelopeTypeError, match="data must be bytes"):
        Envelope().parse(data)  # type: ignore[arg-type]


def test_parse_replaces_previous_content() -> None:
    env = parsed(b"A: 1\r\n\r\nfirst")
    env.parse(b"B: 2\r\n\r\nsecond")
    assert env.headers is not None
    assert env.headers.keys() == ["B"]
    assert env.message == b"second"


# -- bad input: always an Envelope, never lost bytes ------------------------

BAD_INPUTS = {
    "empty": b"",
    "only_blank_line": b"\r\n",
    "garbage": b"this is not a header at all\r\nnor this\r\n\r\nbody",
    "binary_garbage": bytes(range(256)) * 4,
    "headers_without_body": b"From: a@example.com\r\nSubject: x\r\n",
    "headers_without_final_newline": b"From: a@example.com\r\nSubject: x",
    "nul_in_header": b"Subject: a\x00b\r\n\r\nbody",
    "nul_as_header": b"\x00\x00\r\n\r\nbody",
    "nul_in_body": b"Subject: x\r\n\r\n\x00\x00\x00",
    "invalid_utf8_header": b"Subject: \xff\xfe\xc3(\r\n\r\nbody",
    "invalid_utf8_body": b"Subject: x\r\n\r\n\xff\xfe\xc3(\xed\xa0\x80",
    "leading_continuation": b" folded first\r\nSubject: x\r\n\r\nbody",
    "mbox_from_line_first": b"From someone Mon Jan  1 00:00:00 2024\r\nSubject: x\r\n\r\nbody",
    "mbox_from_line_middle": b"Subject: x\r\nFrom someone\r\nTo: y\r\n\r\nbody",
    "empty_name": b":value\r\nSubject: x\r\n\r\nbody",
    "space_before_colon": b"Subject : x\r\n\r\nbody",
    "bare_cr_in_header": b"Subject: a\rb\r\nTo: y\r\n\r\nbody",
    "cr_cr_lf": b"Subject: a\r\r\nTo: y\r\n\r\nbody",
    "non_ascii_name": b"Subj\xe9ct: x\r\n\r\nbody",
    "only_lf": b"\n\n\n\n",
    "only_cr": b"\r\r\r\r",
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_loses_no_bytes(name: str) -> None:
    data = BAD_INPUTS[name]
    env = parsed(data)
    header_bytes, body = env.flatten()
    assert header_bytes.endswith(b"\r\n")
    # Everything after the first empty line is in the body, and the body is
    # a tail of the (normalised) input: nothing dropped, nothing invented.
    assert crlf(data).endswith(body)
    assert body.endswith(crlf(data[reference_body_start(data) :]))
    assert BARE_LF.search(body) is None


def test_malformed_header_line_ends_the_header_section() -> None:
    env = parsed(BAD_INPUTS["mbox_from_line_middle"])
    assert env.headers is not None
    assert env.headers.keys() == ["Subject"]
    assert env.message == b"From someone\r\nTo: y\r\n\r\nbody"
    header_bytes, body = env.flatten()
    assert header_bytes + body == b"Subject: x\r\n\r\nFrom someone\r\nTo: y\r\n\r\nbody"


def test_leading_continuation_line_is_kept_as_body() -> None:
    env = parsed(BAD_INPUTS["leading_continuation"])
    assert env.headers is not None
    assert len(env.headers) == 0
    assert env.message == BAD_INPUTS["leading_continuation"]


def test_bare_cr_in_header_is_not_a_line_break() -> None:
    # The stdlib would split "Subject: a\rb" into two lines; we stop instead.
    env = parsed(BAD_INPUTS["bare_cr_in_header"])
    assert env.message == BAD_INPUTS["bare_cr_in_header"]


def test_headers_without_body() -> None:
    env = parsed(BAD_INPUTS["headers_without_final_newline"])
    assert env.headers is not None
    assert env.headers["Subject"] == "x"
    assert env.message == b""
    assert env.flatten() == (b"From: a@example.com\r\nSubject: x\r\n\r\n", b"")


def test_empty_input() -> None:
    env = parsed(b"")
    assert env.headers is not None
    assert len(env.headers) == 0
    assert env.flatten() == (b"\r\n", b"")


def test_one_megabyte_header_line() -> None:
    value = b"v" * MIB
    env = parsed(b"X-Big: " + value + b"\r\nSubject: x\r\n\r\nbody")
    assert env.headers is not None
    assert len(env.headers["X-Big"]) == MIB
    assert env.message == b"body"
    assert env.flatten()[0] == b"X-Big: " + value + b"\r\nSubject: x\r\n\r\n"


def test_one_megabyte_line_that_is_not_a_header() -> None:
    line = b"v" * MIB
    env = parsed(b"Subject: x\r\n" + line + b"\r\n\r\nbody")
    assert env.message == line + b"\r\n\r\nbody"


def test_nul_bytes_in_header_value_round_trip() -> None:
    data = b"Subject: a\x00b\r\n\r\nbody"
    env = parsed(data)
    assert b"".join(env.flatten()) == data


# -- flatten ----------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Subject: caf\xc3\xa9 \xe2\x9c\x93",  # UTF-8 (RFC 6532)
        b"Subject: caf\xe9",  # latin-1
        b"Subject: \xff\xfe\xc3(",  # invalid UTF-8
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.com>",
        b"To: J\xc3\xb6rg <j\xc3\xb6rg@b\xc3\xbccher.example>",
        b"X-Folded: one\r\n two\r\n\tthree",
        b"X-Starts-Folded:\r\n value",
        b"X-Long: " + b"word " * 60,
        b"X-Tab: a\tb",
    ],
)
def test_headers_round_trip_byte_for_byte(header: bytes) -> None:
    data = b"Received: from x\r\n" + header + b"\r\nX-After: y\r\n\r\nbody\r\n"
    env = parsed(data)
    assert b"".join(env.flatten()) == data


def test_bare_lf_input_flattens_to_crlf() -> None:
    env = parsed(b"From: a\nX-F: one\n two\n\nline1\nline2\n")
    assert env.flatten() == (b"From: a\r\nX-F: one\r\n two\r\n\r\n", b"line1\r\nline2\r\n")


def test_flatten_leaves_existing_crlf_and_bare_cr_alone() -> None:
    env = Envelope(message=b"a\r\nb\nc\rd\r\r\ne")
    assert env.flatten()[1] == b"a\r\nb\r\nc\rd\r\r\ne"


def test_clean_body_is_not_copied() -> None:
    env = parsed(b"Subject: x\r\n\r\n" + b"line\r\n" * 1000)
    assert env.flatten()[1] is env.message


def test_flatten_without_headers_or_body() -> None:
    assert Envelope().flatten() == (b"\r\n", b"")
    assert Envelope(message=b"x\n").flatten() == (b"\r\n", b"x\r\n")


def test_flatten_encodes_non_ascii_text_set_by_code() -> None:
    env = parsed(b"From: a\r\n\r\n")
    assert env.headers is not None
    env.headers["Subject"] = "café"
    header_bytes = env.flatten()[0]
    assert header_bytes.isascii()
    value = header_bytes.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
    assert str(email.header.make_header(email.header.decode_header(value))) == "café"


def test_flatten_encodes_header_objects() -> None:
    env = parsed(b"From: a\r\n\r\n")
    assert env.headers is not None
    env.headers["Subject"] = Header("naïve", "utf-8")
    assert env.flatten()[0] == b"From: a\r\nSubject: =?utf-8?b?bmHDr3Zl?=\r\n\r\n"


@pytest.mark.parametrize("value", ["a\r\nBcc: x@example.com", "a\nB: c", "a\rB: c", "a\r\n"])
def test_flatten_refuses_header_injection(value: str) -> None:
    env = Envelope(headers=Message())
    assert env.headers is not None
    env.headers["Subject"] = value
    with pytest.raises(EnvelopeError, match="'Subject' has a line break"):
        env.flatten()


def test_flatten_accepts_folding_set_by_code() -> None:
    env = Envelope(headers=Message())
    assert env.headers is not None
    env.headers["Subject"] = "a\n b"
    assert env.flatten()[0] == b"Subject: a\r\n b\r\n\r\n"


@pytest.mark.parametrize("name", ["Bad Name", "Colon:", "", "Ünïcode"])
def test_flatten_refuses_bad_header_names(name: str) -> None:
    env = Envelope(headers=Message())
    assert env.headers is not None
    env.headers[name] = "x"
    with pytest.raises(EnvelopeError, match="invalid header field name"):
        env.flatten()


def test_flatten_refuses_a_str_body() -> None:
    env = Envelope()
    env.message = "text"  # type: ignore[assignment]
    with pytest.raises(EnvelopeTypeError, match="message must be bytes"):
        env.flatten()


def test_flatten_writes_a_unixfrom_line_set_by_code() -> None:
    env = parsed(b"Subject: x\r\n\r\nbody")
    assert env.headers is not None
    env.headers.set_unixfrom("From a@example.com Mon Jan  1 00:00:00 2024")
    assert env.flatten()[0].startswith(b"From a@example.com Mon Jan  1 00:00:00 2024\r\nSubject")


# -- size: a functional bound, not a benchmark ------------------------------


def big_body(size: int, newline: bytes) -> bytes:
    line = b"x" * 76 + newline
    return line * (size // 78)


@pytest.mark.parametrize("newline", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_ten_mebibytes_parse_and_flatten_quickly(newline: bytes) -> None:
    body = big_body(10 * MIB, newline)
    data = b"From: a@example.com" + newline + b"Subject: big" + newline + newline + body
    start = time.perf_counter()
    env = parsed(data)
    header_bytes, out = env.flatten()
    elapsed = time.perf_counter() - start
    assert out == big_body(10 * MIB, b"\r\n")
    assert header_bytes == b"From: a@example.com\r\nSubject: big\r\n\r\n"
    # Linear work takes tens of milliseconds; anything quadratic takes minutes.
    assert elapsed < 0.4


@pytest.mark.parametrize(("newline", "copies"), [(b"\r\n", 1.2), (b"\n", 2.2)], ids=["crlf", "bare-lf"])
def test_ten_mebibytes_use_few_copies(newline: bytes, copies: float) -> None:
    data = b"Subject: big" + newline + newline + big_body(10 * MIB, newline)
    tracemalloc.start()
    try:
        env = parsed(data)
        env.flatten()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # One slice for the body; flatten copies nothing for a clean body and
    # once (the CRLF version) for a bare-LF body.
    assert peak < copies * len(data)


def test_ten_mebibytes_without_an_empty_line() -> None:
    data = b"Subject: x\r\n" + big_body(10 * MIB, b"\r\n")
    start = time.perf_counter()
    env = parsed(data)
    assert time.perf_counter() - start < 0.4
    assert env.message == data[len(b"Subject: x\r\n") :]


def test_many_header_fields() -> None:
    data = b"".join(b"X-H%d: value\r\n" % i for i in range(20000)) + b"\r\nbody"
    env = parsed(data)
    assert env.headers is not None
    assert len(env.headers) == 20000
    assert b"".join(env.flatten()) == data


# -- parse_msg --------------------------------------------------------------


def test_parse_msg_multipart() -> None:
    msg = MIMEMultipart()
    msg["Subject"] = "parts"
    msg.attach(MIMEText("hello", "plain"))
    msg.attach(MIMEText("<p>hi</p>", "html"))
    env = Envelope()
    env.parse_msg(msg)
    assert env.headers is not None
    assert env.headers["Subject"] == "parts"
    assert env.message is not None
    reparsed = email.message_from_bytes(b"".join(env.flatten()))
    assert [p.get_payload() for p in reparsed.get_payload()] == ["hello", "<p>hi</p>"]
    assert BARE_LF.search(env.message) is None


def test_parse_msg_keeps_8bit_and_long_headers() -> None:
    data = b"Subject: caf\xc3\xa9\r\nX-Long: " + b"word " * 40 + b"\r\n\r\nbody \xe9\r\n"
    env = Envelope()
    env.parse_msg(email.message_from_bytes(data, policy=compat32))
    assert b"".join(env.flatten()) == data


def test_parse_msg_drops_mbox_from_line() -> None:
    msg = email.message_from_bytes(b"From x@example.com Mon Jan 1\nSubject: y\n\nbody\n")
    env = Envelope()
    env.parse_msg(msg)
    assert env.flatten() == (b"Subject: y\r\n\r\n", b"body\r\n")


def test_parse_msg_rejects_non_message() -> None:
    with pytest.raises(EnvelopeTypeError, match=r"msg must be an email\.message\.Message"):
        Envelope().parse_msg(b"Subject: x\r\n\r\n")  # type: ignore[arg-type]


# -- prepend_header and copy ------------------------------------------------


def test_prepend_header_goes_first() -> None:
    env = parsed(b"From: a\r\nTo: b\r\n\r\nbody")
    env.prepend_header("Received", "from x by y")
    env.prepend_header("Return-Path", "<a@example.com>")
    assert env.headers is not None
    assert env.headers.keys() == ["Return-Path", "Received", "From", "To"]
    assert env.flatten()[0] == (
        b"Return-Path: <a@example.com>\r\nReceived: from x by y\r\nFrom: a\r\nTo: b\r\n\r\n"
    )


def test_prepend_header_without_headers() -> None:
    env = Envelope(message=b"body")
    env.prepend_header("Received", "x")
    assert env.flatten() == (b"Received: x\r\n\r\n", b"body")


def test_copy_is_independent() -> None:
    env = Envelope("s@example.com", ["r1@example.com"])
    env.parse(b"From: s@example.com\r\nTo: r1@example.com\r\n\r\n" + b"x" * 100000)
    env.client["ip"] = "192.0.2.1"
    dup = env.copy()
    assert dup is not env
    assert dup.flatten() == env.flatten()
    assert dup.headers is not None
    dup.headers.replace_header("To", "other@example.com")
    dup.prepend_header("Received", "x")
    dup.recipients.append("r2@example.com")
    dup.client["ip"] = "192.0.2.2"
    assert env.headers is not None
    assert env.headers.keys() == ["From", "To"]
    assert env.headers["To"] == "r1@example.com"
    assert env.recipients == ["r1@example.com"]
    assert env.client["ip"] == "192.0.2.1"
    # The body is immutable, so it is shared rather than copied.
    assert dup.message is env.message


def test_copy_with_new_recipients() -> None:
    env = Envelope("s@example.com", ["r1@example.com"])
    dup = env.copy([*env.recipients, "r2@example.com"])
    assert dup.recipients == ["r1@example.com", "r2@example.com"]
    assert env.recipients == ["r1@example.com"]
    # As in python-slimta 4.0, an empty list keeps the recipients.
    assert env.copy([]).recipients == ["r1@example.com"]


# -- 8-bit helpers ----------------------------------------------------------


def test_8bit_helpers() -> None:
    env = parsed(b"Subject: plain\r\n\r\nplain body")
    assert not env.has_8bit_body()
    assert not env.has_8bit_headers()
    assert not env.is_8bit()
    env = parsed(b"Subject: plain\r\n\r\nbody \x80")
    assert env.has_8bit_body()
    assert not env.has_8bit_headers()
    assert env.is_8bit()
    env = parsed(b"Subject: caf\xc3\xa9\r\n\r\nplain")
    assert not env.has_8bit_body()
    assert env.has_8bit_headers()
    assert env.is_8bit()
    assert not Envelope().is_8bit()


def test_header_objects_are_not_8bit() -> None:
    env = Envelope(headers=Message())
    assert env.headers is not None
    env.headers["Subject"] = Header("café", "utf-8")
    assert not env.has_8bit_headers()


@pytest.mark.parametrize(
    ("sender", "rcpts", "expected"),
    [
        ("a@example.com", ["b@example.com"], False),
        (None, [], False),
        ("", ["b@example.com"], False),
        ("jörg@example.com", ["b@example.com"], True),
        ("a@example.com", ["b@example.com", "用户@例子.广告"], True),
    ],
)
def test_has_utf8_addresses(sender: str | None, rcpts: list[str], expected: bool) -> None:
    assert Envelope(sender, rcpts).has_utf8_addresses() is expected


# -- encode_7bit ------------------------------------------------------------


def test_encode_7bit_leaves_ascii_alone() -> None:
    env = parsed(b"Subject: x\r\nContent-Transfer-Encoding: 7bit\r\n\r\nplain\r\n")
    before = env.message
    env.encode_7bit()
    assert env.message is before
    assert env.flatten()[0] == b"Subject: x\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"


def test_encode_7bit_default_is_base64() -> None:
    body = "héllo wörld\n".encode() * 50
    env = parsed(b"Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body)
    env.encode_7bit()
    assert env.headers is not None
    assert env.headers.get_all("Content-Transfer-Encoding") == ["base64"]
    out = env.flatten()[1]
    assert out.isascii()
    assert BARE_LF.search(out) is None
    assert max(len(line) for line in out.split(b"\r\n")) <= 76
    assert base64.b64decode(out) == crlf(body)
    assert not env.has_8bit_body()


def test_encode_7bit_quoted_printable() -> None:
    body = b"caf\xc3\xa9 = ok\r\nline two \xff\r\n" + b"z" * 200 + b"\r\n"
    env = parsed(b"Subject: x\r\n\r\n" + body)
    env.encode_7bit(email.encoders.encode_quopri)
    assert env.headers is not None
    assert env.headers["Content-Transfer-Encoding"] == "quoted-printable"
    out = env.flatten()[1]
    assert out.isascii()
    assert max(len(line) for line in out.split(b"\r\n")) <= 76
    assert binascii.a2b_qp(out) == body


def test_encode_7bit_with_another_encoder_function() -> None:
    env = parsed(b"Subject: x\r\n\r\nbody \xe9\r\n")
    env.encode_7bit(lambda part: email.encoders.encode_base64(part))
    assert env.headers is not None
    assert env.headers["Content-Transfer-Encoding"] == "base64"
    assert base64.b64decode(env.flatten()[1]) == b"body \xe9\r\n"


def test_encode_7bit_refuses_an_encoder_that_keeps_8bit() -> None:
    env = parsed(b"Subject: x\r\n\r\nbody \xe9\r\n")
    with pytest.raises(EnvelopeError, match="did not make the body 7-bit"):
        env.encode_7bit(email.encoders.encode_7or8bit)


def test_encode_7bit_without_headers() -> None:
    env = Envelope(message=b"\xe9")
    env.encode_7bit()
    assert env.flatten() == (b"Content-Transfer-Encoding: base64\r\n\r\n", b"6Q==\r\n")


MULTIPART = (
    b"From: a@example.com\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="BOUND"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"h\xc3\xa9llo\r\n"
    b"--BOUND\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"plain ascii\r\n"
    b"--BOUND--\r\n"
)


@pytest.mark.parametrize(
    ("encoder", "cte"),
    [(None, "base64"), (email.encoders.encode_quopri, "quoted-printable")],
)
def test_encode_7bit_multipart_encodes_each_8bit_part(encoder: object, cte: str) -> None:
    env = parsed(MULTIPART)
    top_headers = env.flatten()[0]
    env.encode_7bit(encoder)  # type: ignore[arg-type]
    header_bytes, body = env.flatten()
    # Top-level headers (even 8-bit ones) are not touched.
    assert header_bytes == top_headers
    assert body.isascii()
    msg = email.message_from_bytes(header_bytes + body)
    first, second = msg.get_payload()
    assert first.get_all("Content-Transfer-Encoding") == [cte]
    assert first.get_payload(decode=True).rstrip(b"\r\n") == "héllo".encode()
    assert second.get_payload() == "plain ascii"
    assert "Content-Transfer-Encoding" not in second


def test_encode_7bit_multipart_without_boundary_is_one_part() -> None:
    env = parsed(b"Content-Type: multipart/mixed\r\n\r\nbody \xe9\r\n")
    env.encode_7bit()
    assert env.headers is not None
    assert env.headers["Content-Transfer-Encoding"] == "base64"
    assert base64.b64decode(env.flatten()[1]) == b"body \xe9\r\n"


# -- properties -------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEADER_NAME = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=20,
)
# Value bytes: anything but CR and LF; the first byte is not whitespace,
# since the parser strips leading whitespace from a value.
VALUE_BYTES = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
FIRST_VALUE = VALUE_BYTES.map(lambda b: b.lstrip(b" \t"))
CONTINUATION = st.tuples(st.sampled_from([b" ", b"\t"]), VALUE_BYTES).map(b"".join)


@st.composite
def header_fields(draw: st.DrawFn) -> bytes:
    name = draw(HEADER_NAME).encode()
    first = draw(FIRST_VALUE)
    more = draw(st.lists(CONTINUATION, max_size=3))
    # A value that starts on the next line is written "Name:" CRLF WSP...;
    # the parser cannot tell that from "Name: " CRLF WSP..., so the
    # property uses the form flatten() writes.
    colon = b":" if more and not first else b": "
    return b"\r\n".join([name + colon + first, *more]) + b"\r\n"


@FAST
@given(data=st.binary(max_size=400))
def test_property_arbitrary_bytes_lose_nothing(data: bytes) -> None:
    env = parsed(data)
    header_bytes, body = env.flatten()
    assert header_bytes.endswith(b"\r\n")
    assert BARE_LF.search(body) is None
    assert crlf(data).endswith(body)
    assert body.endswith(crlf(data[reference_body_start(data) :]))


@FAST
@given(
    fields=st.lists(header_fields(), max_size=6),
    newline=st.sampled_from([b"\r\n", b"\n"]),
    body=st.binary(max_size=300),
)
def test_property_well_formed_headers_round_trip(fields: list[bytes], newline: bytes, body: bytes) -> None:
    header_section = b"".join(fields)
    env = parsed(header_section.replace(b"\r\n", newline) + newline + body)
    header_bytes, out = env.flatten()
    assert header_bytes == header_section + b"\r\n"
    assert out == crlf(body)
    assert env.message == body


@FAST
@given(data=st.binary(max_size=400))
def test_property_flatten_is_a_fixed_point(data: bytes) -> None:
    once = b"".join(parsed(data).flatten())
    assert b"".join(parsed(once).flatten()) == once


@FAST
@given(body=st.binary(max_size=400), quopri=st.booleans())
def test_property_encode_7bit_is_clean_and_reversible(body: bytes, quopri: bool) -> None:
    env = parsed(b"Subject: x\r\n\r\n" + body)
    env.encode_7bit(email.encoders.encode_quopri if quopri else None)
    out = env.flatten()[1]
    assert out.isascii()
    if body.isascii():
        assert out == crlf(body)
    elif quopri:
        assert binascii.a2b_qp(out) == crlf(body)
    else:
        assert base64.b64decode(out) == crlf(body)


# -- the fast header parser agrees with the stdlib parser ------------------------------

_field_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True)
_field_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@given(
    fields=st.lists(
        st.tuples(
            _field_names, _field_text, st.lists(_field_text, max_size=2), st.sampled_from(["\r\n", "\n"])
        ),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_header_parse_matches_stdlib(fields):
    lines = []
    for name, value, folds, eol in fields:
        lines.append(f"{name}:{value}{eol}" + "".join(f" {fold}{eol}" for fold in folds))
    section = "".join(lines)
    env = Envelope()
    env.parse(section.encode() + b"\r\nbody\r\n")
    from email.parser import Parser
    from email.policy import compat32

    expected = Parser(policy=compat32).parsestr(section, headersonly=True)
    assert env.headers.items() == expected.items()
    assert env.message == b"body\r\n"


@given(
    fields=st.lists(
        st.tuples(
            st.sampled_from(["Received", "received", "RECEIVED", "X-Received", "Subject"]), _field_text
        ),
        max_size=12,
    )
)
@settings(max_examples=200, deadline=None, derandomize=True)
def test_count_headers_same_before_and_after_parsing(fields):
    section = "".join(f"{name}:{value}\r\n" for name, value in fields)
    env = Envelope()
    env.parse(section.encode() + b"\r\nbody\r\n")
    unparsed = env.count_headers("Received")
    assert env.headers is not None  # parses now
    assert env.count_headers("Received") == unparsed
    assert unparsed == sum(1 for name, _ in fields if name.lower() == "received")


def test_headers_parsed_lazily_and_assignable():
    env = Envelope()
    env.parse(b"Subject: lazy\r\n\r\nbody\r\n")
    assert env._headers is None  # nothing parsed yet
    assert env.flatten() == (b"Subject: lazy\r\n\r\n", b"body\r\n")
    assert env._headers is None  # a canonical section is sent back unparsed
    assert env.headers["Subject"] == "lazy"
    replacement = Message()
    env.headers = replacement
    assert env.headers is replacement
    assert env.flatten() == (b"\r\n", b"body\r\n")


_spacing = st.sampled_from(["", " ", "  ", "\t", " \t"])


@given(
    fields=st.lists(
        st.tuples(
            _field_names,
            _spacing,
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=10),
            st.lists(st.tuples(st.sampled_from([" ", "\t"]), _field_text), max_size=2),
            st.sampled_from(["\r\n", "\n"]),
        ),
        max_size=6,
    ),
    high=st.booleans(),
)
@settings(max_examples=400, deadline=None, derandomize=True)
def test_unparsed_flatten_equals_parsed_flatten(fields, high):
    # The fast path (raw header bytes sent back) must give exactly what
    # parsing and serialising the fields gives.
    lines = []
    for name, space, value, folds, eol in fields:
        lines.append(f"{name}:{space}{value}{eol}" + "".join(f"{ws}{fold}{eol}" for ws, fold in folds))
    section = "".join(lines).encode() + (b"X-High: \xe9t\xe9\r\n" if high else b"")
    data = section + b"\r\nbody\r\n"
    fast, slow = Envelope(), Envelope()
    fast.parse(data)
    slow.parse(data)
    assert slow.headers is not None  # forces the parse
    assert fast.flatten() == slow.flatten()


# -- prepend_header on an unparsed header section ------------------------------------

_PREPEND_RAW = b"From: a@b.example\r\nSubject: hi\r\n folded\r\nX-8: caf\xc3\xa9\r\n\r\nbody\r\n"
_PREPEND_VALUES = [
    "x",
    "a b",
    "v=1; a=rsa-sha256;\r\n\tb=abc",
    "v=1;\n b=2",
    "",
    "x\r\ny",
    "x\ny",
    "x\ry",
    " lead",
    "trail ",
    "\r\n starts-next",
    "t\tab",
    "a:b",
    "\u00e9",
]


@pytest.mark.parametrize("name", ["DKIM-Signature", "Received", "Bad Name", "X:Y"])
@pytest.mark.parametrize("value", _PREPEND_VALUES)
def test_prepend_before_parsing_matches_prepend_after_parsing(name: str, value: str) -> None:
    # The unparsed fast path must be invisible: same bytes sent, same field
    # read back, same errors, as prepending to the parsed section.
    def outcome(parse_first: bool) -> tuple[object, ...]:
        env = Envelope()
        env.parse(_PREPEND_RAW)
        if parse_first:
            assert env.headers is not None
        try:
            env.prepend_header(name, value)
        except Exception as exc:
            return ("prepend", type(exc).__name__)
        try:
            flat: object = env.flatten()
        except Exception as exc:
            flat = type(exc).__name__
        assert env.headers is not None
        return (flat, env.headers.get_all(name), env.headers.items()[1:])

    assert outcome(parse_first=False) == outcome(parse_first=True)


def test_prepend_keeps_an_unparsed_section_unparsed() -> None:
    env = Envelope()
    env.parse(_PREPEND_RAW)
    env.prepend_header("Received", "from a by b; Thu, 26 Nov 2026 04:00:00 +0000")
    env.prepend_header("DKIM-Signature", "v=1; a=ed25519-sha256;\r\n\tb=xyz")
    assert env._headers is None  # still bytes: no parse for a prepend
    header, _ = env.flatten()
    assert header.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;\r\n\tb=xyz\r\nReceived: from a by b;")
    assert env.count_headers("Received") == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: plain\r\n\r\nbody\r\n",
        b"Subject: caf\xc3\xa9\r\n\r\nbody\r\n",
        b"X-L1: \xe9t\xe9\r\n\r\nbody\r\n",
        b"Subject: folded\r\n  caf\xc3\xa9\r\n\r\n",
        b"Subject: plain\r\n\r\nbody caf\xc3\xa9\r\n",
        b"",
    ],
)
def test_has_8bit_headers_same_before_and_after_parsing(raw: bytes) -> None:
    # Unparsed, the answer comes from the received bytes; it must be the
    # one the parsed fields give, and asking must not parse.
    unparsed = Envelope()
    unparsed.parse(raw)
    answer = unparsed.has_8bit_headers()
    assert unparsed._headers is None
    parsed = Envelope()
    parsed.parse(raw)
    assert parsed.headers is not None
    assert parsed.has_8bit_headers() == answer
    assert answer == (not raw.split(b"\r\n\r\n", 1)[0].isascii())
