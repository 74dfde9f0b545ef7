from __future__ import annotations

import time

import pytest

from slimta.core import SlimtaError
from slimta.util.bytesformat import BytesFormat, BytesFormatError, MissingFieldError


def test_keyword_and_positional_fields() -> None:
    fmt = BytesFormat(b"from {sender} to {0} and {1}")
    assert fmt.format(b"a@x", "b@y", sender=b"s@z") == b"from s@z to a@x and b@y"


def test_template_without_fields_is_returned_unchanged() -> None:
    assert BytesFormat(b"plain text").format(x=1) == b"plain text"
    assert BytesFormat(b"").format() == b""


def test_adjacent_and_repeated_fields() -> None:
    fmt = BytesFormat(b"{a}{b}{a}")
    assert fmt.format(a=b"1", b=b"2") == b"121"


def test_str_values_are_utf8_and_other_objects_are_str() -> None:
    fmt = BytesFormat(b"{s}|{n}|{f}|{ba}")
    out = fmt.format(s="caf\u00e9", n=3, f=1.5, ba=bytearray(b"xy"))
    # int 3 must be b"3", never bytes(3) == three NUL bytes.
    assert out == "caf\u00e9|3|1.5|xy".encode()


def test_eight_bit_template_bytes_survive() -> None:
    template = b"\xff\xfe {name} \x80"
    assert BytesFormat(template).format(name=b"\x00") == b"\xff\xfe \x00 \x80"


def test_ignore_mode_keeps_unknown_fields() -> None:
    fmt = BytesFormat(b"{known} {unknown} {3}")
    assert fmt.format(known=b"k") == b"k {unknown} {3}"


def test_remove_mode_drops_unknown_fields() -> None:
    fmt = BytesFormat(b"<{known}{unknown}{3}>", mode="remove")
    assert fmt.format(known=b"k") == b"<k>"


def test_strict_mode_missing_keyword() -> None:
    fmt = BytesFormat(b"{known} {unknown}", mode="strict")
    with pytest.raises(MissingFieldError, match=r"\{unknown\}") as info:
        fmt.format(known=b"k")
    assert info.value.field == "unknown"
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, SlimtaError)


def test_strict_mode_positional_index_at_and_past_the_limit() -> None:
    fmt = BytesFormat(b"{0}{1}", mode="strict")
    # Exactly as many arguments as the highest index needs: fine.
    assert fmt.format(b"a", b"b") == b"ab"
    # One fewer: {1} is one past the end.
    with pytest.raises(IndexError, match=r"\{1\}"):
        fmt.format(b"a")


def test_non_field_braces_are_literal() -> None:
    fmt = BytesFormat(b"{ x } {a:>3} {{a}} {} {a!r}", mode="strict")
    # Only the inner {a} of {{a}} is a field; nothing else is touched.
    assert fmt.format(a=b"Z") == b"{ x } {a:>3} {Z} {} {a!r}"


def test_bytes_like_template_accepted() -> None:
    assert BytesFormat(bytearray(b"{a}")).format(a=b"1") == b"1"
    assert BytesFormat(memoryview(b"{a}")).format(a=b"1") == b"1"


@pytest.mark.parametrize("template", ["{a}", None, 5])
def test_non_bytes_template_rejected(template: object) -> None:
    with pytest.raises(BytesFormatError, match="template must be bytes"):
        BytesFormat(template)  # type: ignore[arg-type]


def test_unknown_mode_rejected() -> None:
    with pytest.raises(BytesFormatError, match=r"mode must be one of.*'lenient'"):
        BytesFormat(b"x", mode="lenient")


def test_repr_names_template_and_mode() -> None:
    assert repr(BytesFormat(b"a{b}", mode="remove")) == "BytesFormat(b'a{b}', mode='remove')"


def test_format_is_linear_in_template_size() -> None:
    # 20k fields vs 200k fields: a quadratic join would be ~100x slower, a
    # linear one ~10x.  Allow a generous 30x for timer noise.
    def cost(n: int) -> float:
        fmt = BytesFormat(b"x{f}" * n)
        start = time.perf_counter()
        out = fmt.format(f=b"yy")
        elapsed = time.perf_counter() - start
        assert len(out) == 3 * n
        return elapsed

    small = min(cost(20_000) for _ in range(3))
    large = min(cost(200_000) for _ in range(3))
    assert large < small * 30
