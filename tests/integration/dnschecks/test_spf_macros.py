"""SPF macro expansion: the examples of RFC 7208 section 7.4, and the syntax rules."""

from __future__ import annotations

import ipaddress
import time

import pytest

from slimta.util import _spf
from slimta.util.dns import DNSResolver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


def context(ip: str) -> _spf.Context:
    return _spf.Context(
        ip=ipaddress.ip_address(ip),
        sender="strong-bad@email.example.com",
        local="strong-bad",
        sender_domain="email.example.com",
        helo="mx.example.org",
        deadline=time.monotonic() + 5,
        resolver=DNSResolver(servers=["127.0.0.1:9"]),  # never asked
    )


# RFC 7208 section 7.4, with sender strong-bad@email.example.com and client 192.0.2.3.
RFC_EXAMPLES = [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
]


@pytest.mark.parametrize(("macro", "expected"), RFC_EXAMPLES)
def test_rfc_7208_examples(macro: str, expected: str) -> None:
    assert _spf._macro_tokens(macro) is not None
    assert _spf._expand(context("192.0.2.3"), macro, "email.example.com") == expected


def test_rfc_7208_ipv6_example() -> None:
    expanded = _spf._expand(context("2001:db8::cb01"), "%{ir}.%{v}._spf.%{d2}", "email.example.com")
    assert expanded == "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("%%%_%-", "% %20"),
        ("%{h}", "mx.example.org"),
        ("%{p}", "unknown"),
        ("%{S}", "strong-bad%40email.example.com"),
        ("%{L}", "strong-bad"),
        ("%{d99}", "email.example.com"),
        ("%{d2R}", "example.email"),
        ("%{s-.}", "strong.bad@email.example.com"),
        ("%{s1-}", "bad@email.example.com"),
        ("%{l=-}", "strong.bad"),
        ("%{v}", "in-addr"),
    ],
)
def test_escapes_uppercase_and_delimiters(macro: str, expected: str) -> None:
    assert _spf._expand(context("192.0.2.3"), macro, "email.example.com") == expected


def test_explanation_only_letters() -> None:
    ctx = context("192.0.2.3")
    text = "%{c} is not allowed for %{d}; see %{r} at %{t}"
    assert _spf._macro_tokens(text) is None  # spaces and c/r/t: explanations only
    expanded = _spf._expand(ctx, text, "email.example.com", explain=True)
    before, _, stamp = expanded.rpartition(" at ")
    assert before == "192.0.2.3 is not allowed for email.example.com; see unknown"
    assert abs(int(stamp) - time.time()) < 5


@pytest.mark.parametrize(
    "macro", ["%{x}", "%{d0}", "%{d01}", "%", "%{d", "%a", "a b", "%{ir}.%{v}%", "%{dr*}", "%{s+@}"]
)
def test_macro_syntax_errors(macro: str) -> None:
    assert _spf._macro_tokens(macro) is None


def test_long_expansion_is_cut_on_the_left() -> None:
    ctx = context("192.0.2.3")
    ctx.local = "a." * 150 + "b"
    name = _spf._target(ctx, "%{l}.example.com", "email.example.com")
    assert len(name) <= 253
    assert name.endswith(".a.a.b.example.com")
    assert not name.startswith(".")
