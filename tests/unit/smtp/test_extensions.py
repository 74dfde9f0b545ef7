"""slimta.smtp.extensions.Extensions."""

from __future__ import annotations

from slimta.smtp.extensions import Extensions


def test_add_contains_drop_are_case_insensitive() -> None:
    ext = Extensions()
    assert "PIPELINING" not in ext
    ext.add("pipelining")
    assert "PIPELINING" in ext
    assert "Pipelining" in ext
    assert 42 not in ext
    assert ext.drop("PipeLining") is True
    assert "PIPELINING" not in ext
    assert ext.drop("PIPELINING") is False
    assert len(ext) == 0


def test_drop_an_extension_whose_param_is_none() -> None:
    ext = Extensions()
    ext.add("8BITMIME", None)
    assert ext.drop("8bitmime") is True


def test_getparam() -> None:
    ext = Extensions()
    ext.add("SIZE", "1024")
    ext.add("AUTH", "PLAIN LOGIN")
    ext.add("STARTTLS")
    assert ext.getparam("size") == "1024"
    assert ext.getparam("SIZE", filter=int) == 1024
    assert ext.getparam("AUTH", filter=int) is None
    assert ext.getparam("STARTTLS") is None
    assert ext.getparam("STARTTLS", filter=int) is None
    assert ext.getparam("MISSING", filter=int) is None


def test_parse_string() -> None:
    ext = Extensions()
    ext.add("OLD")
    header = ext.parse_string(
        "mx.test Hello\r\nSIZE 1000\r\nauth PLAIN  LOGIN\r\n8BITMIME\r\n  \r\nPIPELINING  "
    )
    assert header == "mx.test Hello"
    assert "OLD" not in ext
    assert list(ext) == ["SIZE", "AUTH", "8BITMIME", "PIPELINING"]
    assert ext.getparam("SIZE", filter=int) == 1000
    assert ext.getparam("AUTH") == "PLAIN  LOGIN"
    assert ext.getparam("8BITMIME") is None


def test_build_string() -> None:
    class Mechanisms:
        def __str__(self) -> str:
            return "PLAIN LOGIN "

    ext = Extensions()
    ext.add("8BITMIME")
    ext.add("SIZE", 10240000)
    ext.add("AUTH", Mechanisms())
    ext.add("STARTTLS", True)
    assert ext.build_string("mx.test ESMTP") == (
        "mx.test ESMTP\r\n8BITMIME\r\nSIZE 10240000\r\nAUTH PLAIN LOGIN\r\nSTARTTLS"
    )
    assert Extensions().build_string("only") == "only"


def test_build_parse_round_trip() -> None:
    ext = Extensions()
    ext.add("PIPELINING")
    ext.add("SIZE", "5000")
    ext.add("AUTH", "PLAIN LOGIN CRAM-MD5")
    ext.add("SMTPUTF8")
    other = Extensions()
    assert other.parse_string(ext.build_string("hi there")) == "hi there"
    assert other.extensions == ext.extensions


def test_reset() -> None:
    ext = Extensions()
    ext.add("X")
    ext.reset()
    assert len(ext) == 0
