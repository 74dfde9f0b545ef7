"""slimta.smtp._grammar: MAIL/RCPT paths and ESMTP parameters."""

from __future__ import annotations

import pytest

from slimta.smtp._grammar import (
    MAX_LOCAL_PART,
    MAX_PATH,
    GrammarError,
    parse_params,
    parse_path_argument,
)


@pytest.mark.parametrize(
    ("arg", "keyword", "expected"),
    [
        ("FROM:<a@b.test>", "FROM", ("a@b.test", "")),
        ("from:<a@b.test> SIZE=1", "FROM", ("a@b.test", " SIZE=1")),
        ("FROM:   <a@b.test>", "FROM", ("a@b.test", "")),
        ("FROM:<>", "FROM", ("", "")),
        ("FROM:<> BODY=7BIT", "FROM", ("", " BODY=7BIT")),
        ('FROM:<"a>b"@c.test>', "FROM", ('"a>b"@c.test', "")),
        ('FROM:<"a b\\"c"@c.test>', "FROM", ('"a b\\"c"@c.test', "")),
        ('FROM:<"">x@c.test>', "FROM", None),
        ("FROM:<@a.test,@b.test:x@c.test>", "FROM", ("x@c.test", "")),
        ("TO:<postmaster>", "TO", ("postmaster", "")),
        ("TO:<POSTMASTER> NOTIFY=NEVER", "TO", ("POSTMASTER", " NOTIFY=NEVER")),
        ("TO:<a.b-c+d@sub.dom-ain.test>", "TO", ("a.b-c+d@sub.dom-ain.test", "")),
        ("TO:<a@[IPv6:2001:db8::1]>", "TO", ("a@[IPv6:2001:db8::1]", "")),
        ("TO:<\u00fc@\u00e9.test>", "TO", ("\u00fc@\u00e9.test", "")),
    ],
)
def test_parse_path_argument_accepts(arg: str, keyword: str, expected: tuple[str, str] | None) -> None:
    if expected is None:
        with pytest.raises(GrammarError):
            parse_path_argument(arg, keyword, allow_null=True)
        return
    assert parse_path_argument(arg, keyword, allow_null=keyword == "FROM") == expected


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("TO:<a@b.test>", "expected FROM"),
        ("FROM a@b.test", "expected FROM"),
        ("FROM:a@b.test", "enclosed"),
        ("FROM:<a@b.test", "enclosed"),
        ("FROM:<a@b.test>junk", "garbage"),
        ("FROM:<a\x00b@c.test>", "control"),
        ("FROM:<a@c.test\x7f>", "control"),
        ("FROM:<a b@c.test>", "malformed"),
        ("FROM:<.a@c.test>", "malformed"),
        ("FROM:<a.@c.test>", "malformed"),
        ("FROM:<a@c..test>", "malformed"),
        ("FROM:<a@-c.test>", "malformed"),
        ("FROM:<a@c-.test>", "malformed"),
        ("FROM:<a@>", "malformed"),
        ("FROM:<a>", "malformed"),
        ("FROM:<postmaster>", "malformed"),
        ("FROM:<a@[]>", "malformed"),
        ("FROM:<a@b@c.test>", "malformed"),
    ],
)
def test_parse_path_argument_rejects(arg: str, reason: str) -> None:
    with pytest.raises(GrammarError, match=reason) as info:
        parse_path_argument(arg, "FROM", allow_null=True)
    assert info.value.address is True


def test_null_path_only_where_allowed() -> None:
    with pytest.raises(GrammarError, match="null"):
        parse_path_argument("TO:<>", "TO", allow_null=False)


def test_path_length_boundary() -> None:
    # 256 octets with the angle brackets (RFC 5321 4.5.3.1.3).
    long_domain = ".".join(["d" * 62] * 4)
    path = "ab@" + long_domain
    assert len(path) + 2 == MAX_PATH
    assert parse_path_argument(f"TO:<{path}>", "TO", allow_null=False)[0] == path
    with pytest.raises(GrammarError, match="too long"):
        parse_path_argument(f"TO:<a{path}>", "TO", allow_null=False)


def test_source_route_counts_towards_the_path_length() -> None:
    route = "@" + "r" * 60 + ".test:"
    long_domain = ".".join(["d" * 62] * 3)
    path = "a@" + long_domain
    assert len(route) + len(path) + 2 > MAX_PATH > len(path) + 2
    with pytest.raises(GrammarError, match="too long"):
        parse_path_argument(f"TO:<{route}{path}>", "TO", allow_null=False)


def test_local_part_boundary() -> None:
    ok = "l" * MAX_LOCAL_PART + "@b.test"
    assert parse_path_argument(f"TO:<{ok}>", "TO", allow_null=False)[0] == ok
    with pytest.raises(GrammarError, match="local part too long"):
        parse_path_argument(f"TO:<l{ok}>", "TO", allow_null=False)


def test_parse_params() -> None:
    assert parse_params("") == {}
    assert parse_params(" size=100  body=8BITMIME SMTPUTF8 ") == {
        "SIZE": "100",
        "BODY": "8BITMIME",
        "SMTPUTF8": True,
    }
    assert parse_params("AUTH=<>") == {"AUTH": "<>"}
    assert parse_params("X-Y=\u00e9") == {"X-Y": "\u00e9"}


@pytest.mark.parametrize("text", ["=x", "A=", "A=b=c", "-A", "A=\x01", "SIZE=1 size=2", "A=b\x7f"])
def test_parse_params_rejects(text: str) -> None:
    with pytest.raises(GrammarError) as info:
        parse_params(text)
    assert info.value.address is False
