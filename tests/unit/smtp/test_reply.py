"""slimta.smtp.reply: codes, enhanced status codes and the wire form."""

from __future__ import annotations

import pytest

from slimta.smtp import reply as reply_module
from slimta.smtp.reply import Reply

CANNED = [
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


def test_message_carries_the_enhanced_status_code() -> None:
    reply = Reply("250", "2.1.0 Sender <a@b.test> Ok")
    assert reply.code == "250"
    assert reply.message == "2.1.0 Sender <a@b.test> Ok"
    assert reply.enhanced_status_code == "2.1.0"
    assert reply.raw_message == "Sender <a@b.test> Ok"
    assert reply.to_bytes() == b"250 2.1.0 Sender <a@b.test> Ok\r\n"


def test_default_enhanced_status_code_follows_the_code() -> None:
    assert Reply("250", "Ok").message == "2.0.0 Ok"
    assert Reply("451", "later").message == "4.0.0 later"
    assert Reply("550", "no").message == "5.0.0 no"
    assert Reply("354", "go ahead").message == "go ahead"
    assert Reply("354", "go ahead").enhanced_status_code is None


def test_changing_the_code_changes_the_esc_class() -> None:
    reply = Reply("250", "2.1.5 Recipient Ok")
    reply.code = "550"
    assert reply.message == "5.1.5 Recipient Ok"
    assert reply.to_bytes() == b"550 5.1.5 Recipient Ok\r\n"
    reply.code = "451"
    assert reply.enhanced_status_code == "4.1.5"
    plain = Reply("250", "Ok")
    plain.code = "421"
    assert plain.message == "4.0.0 Ok"


def test_esc_class_in_the_message_follows_the_code() -> None:
    assert Reply("250", "5.1.1 odd").message == "2.1.1 odd"


def test_message_equal_to_an_esc_alone() -> None:
    reply = Reply("250", "2.1.0")
    assert reply.message == "2.1.0"
    assert reply.raw_message == ""


def test_enhanced_status_code_false_sends_none() -> None:
    reply = Reply("220", "mx.test ESMTP ready")
    reply.enhanced_status_code = False
    assert reply.message == "mx.test ESMTP ready"
    assert reply.to_bytes() == b"220 mx.test ESMTP ready\r\n"
    reply.code = "554"
    assert reply.to_bytes() == b"554 mx.test ESMTP ready\r\n"
    reply.message = "other text"
    assert reply.enhanced_status_code is None
    reply.enhanced_status_code = True
    assert reply.message == "5.0.0 other text"


def test_enhanced_status_code_setter() -> None:
    reply = Reply("550", "no such user")
    reply.enhanced_status_code = "5.1.1"
    assert reply.message == "5.1.1 no such user"
    reply.enhanced_status_code = "2.123.456"
    assert reply.enhanced_status_code == "5.123.456"
    reply.enhanced_status_code = None
    assert reply.message == "5.0.0 no such user"
    with pytest.raises(ValueError, match="enhanced status code"):
        reply.enhanced_status_code = "9.1.1"
    with pytest.raises(ValueError, match="enhanced status code"):
        reply.enhanced_status_code = "5.1"


def test_multi_line_rendering() -> None:
    reply = Reply("250", "mx.test greets you\r\nPIPELINING\r\nSIZE 1000")
    assert reply.to_bytes() == (
        b"250-2.0.0 mx.test greets you\r\n250-2.0.0 PIPELINING\r\n250 2.0.0 SIZE 1000\r\n"
    )
    no_esc = Reply("250", "mx.test\r\n8BITMIME")
    no_esc.enhanced_status_code = False
    assert no_esc.to_bytes() == b"250-mx.test\r\n250 8BITMIME\r\n"
    # A line that already carries the ESC does not get it twice.
    assert Reply("550", "5.7.1 a\r\n5.7.1 b").to_bytes() == b"550-5.7.1 a\r\n550 5.7.1 b\r\n"


@pytest.mark.parametrize("char", ["\x00", "\r", "\n", "\x1b", "\x7f", "\x08", "\x0b"])
def test_control_characters_replaced_in_to_bytes(char: str) -> None:
    reply = Reply("501", f"5.1.7 bad <a{char}b@c.test>\ttab")
    assert reply.to_bytes() == b"501 5.1.7 bad <a b@c.test>\ttab\r\n"


def test_non_ascii_text_is_utf8() -> None:
    assert Reply("250", "2.1.0 <j\u00f6rg@b.test>").to_bytes() == "250 2.1.0 <j\u00f6rg@b.test>\r\n".encode()


@pytest.mark.parametrize("code", ["", "25", "2500", "600", "099", "abc", "25a", " 250", "250\n"])
def test_invalid_code_raises(code: str) -> None:
    with pytest.raises(ValueError, match="reply code"):
        Reply(code, "x")
    reply = Reply("250", "Ok")
    with pytest.raises(ValueError, match="reply code"):
        reply.code = code
    assert reply.code == "250"


@pytest.mark.parametrize("code", ["100", "250", "599"])
def test_valid_code_limits(code: str) -> None:
    assert Reply(code).code == code


def test_copy() -> None:
    source = Reply("550", "5.7.1 Denied")
    target = Reply("250", "Ok", command="MAIL", address="x")
    assert target.copy(source) is target
    assert target == source
    assert target.command == "MAIL"
    source.code = "450"
    assert target.code == "550"
    assert target.message == "5.7.1 Denied"


def test_bool() -> None:
    assert not Reply()
    assert Reply("250", "Ok")
    assert Reply("250")


def test_equality() -> None:
    assert Reply("250", "Ok") == Reply("250", "2.0.0 Ok")
    assert Reply("250", "Ok") != Reply("251", "Ok")
    assert Reply("250", "Ok") != Reply("250", "Ok!")
    assert Reply("250", "Ok") != "250 2.0.0 Ok"
    with pytest.raises(TypeError):
        hash(Reply("250", "Ok"))


def test_str_bytes_contains_and_is_error() -> None:
    reply = Reply("450", "4.2.0 Try later")
    assert str(reply) == "450 4.2.0 Try later"
    assert bytes(reply) == b"450 4.2.0 Try later"
    assert "later" in reply
    assert b"4.2.0" in reply
    assert reply.is_error()
    assert not Reply("250", "Ok").is_error()
    assert not Reply().is_error()
    assert "Try later" in repr(reply)


def test_newline_first() -> None:
    assert reply_module.TIMED_OUT.to_bytes() == b"\r\n421 4.4.2 Connection timed out\r\n"
    copied = Reply().copy(reply_module.TIMED_OUT)
    assert copied.newline_first


@pytest.mark.parametrize("name", CANNED)
def test_lower_case_canned_names_of_40(name: str) -> None:
    lower = getattr(reply_module, name)
    upper = getattr(reply_module, name.upper())
    assert lower is upper
    assert isinstance(lower, Reply)
    assert lower == upper
    assert name in reply_module.__all__
    assert name.upper() in reply_module.__all__


def test_canned_codes() -> None:
    assert reply_module.unknown_command.to_bytes() == b"500 5.5.2 Syntax error, command unrecognized\r\n"
    assert reply_module.bad_sequence.code == "503"
    assert reply_module.bad_arguments.code == "501"
    assert reply_module.unknown_parameter.code == "555"
    assert reply_module.invalid_credentials.code == "535"
    assert reply_module.tls_failure.code == "421"
    assert reply_module.unhandled_error.message == "4.3.0 Unhandled system error"
