"""``str.format``-style templating for bytes.

Mail is bytes, and policies build headers and bounce bodies from templates
such as ``b'from {sender} by {host}'``.  :class:`BytesFormat` fills those
``{name}`` fields without decoding the template, so 8-bit text outside the
fields passes through untouched.

Theory of operation: the template is split once, at construction, into a
list that alternates literal byte strings and field names.  :meth:`format`
then walks that list and joins the pieces, so each call costs time linear in
the template plus the substituted values, however many fields there are.
Build a :class:`BytesFormat` once and call :meth:`~BytesFormat.format` many
times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from slimta.core import SlimtaError

__all__ = ["BytesFormat", "BytesFormatError", "MissingFieldError"]

# A field is a brace pair around one or more word characters.  Anything else
# in braces (spaces, format specs, nested braces) is literal text, which keeps
# JSON-ish or unrelated brace use in templates from being misread.
_FIELD = re.compile(rb"\{(\w+)\}")

_MODES = ("ignore", "remove", "strict")


class BytesFormatError(SlimtaError, ValueError):
    """A :class:`BytesFormat` was built from a bad template or mode."""


class MissingFieldError(SlimtaError, KeyError, IndexError):
    """A template field had no matching argument in ``'strict'`` mode.

    It is both a :class:`KeyError` (a missing keyword, as ``str.format``
    raises) and an :class:`IndexError` (a missing positional argument), so
    either ``except`` clause written for python-slimta still catches it.

    Attributes:
        field: The name of the unmatched field, e.g. ``'sender'`` or ``'0'``.
    """

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field

    def __str__(self) -> str:
        # KeyError would print only repr(field); say what went wrong.
        return f"no argument for template field {{{self.field}}}"


class BytesFormat:
    """A bytes template with ``{name}`` and ``{0}`` fields.

    A field is ``{`` + word characters + ``}``.  An all-digit name selects a
    positional argument of :meth:`format` by index; any other name selects a
    keyword argument.  Format specs and conversions (``{x:>10}``, ``{x!r}``)
    are not supported and stay in the output as literal text.

    Args:
        template: The template.
        mode: What happens to a field that matches no argument:
            ``'ignore'`` leaves ``{name}`` in the output as it is,
            ``'remove'`` drops it, and ``'strict'`` raises
            :class:`MissingFieldError`.

    Raises:
        BytesFormatError: *template* is not bytes-like, or *mode* is not one
            of the three above.
    """

    def __init__(self, template: bytes, mode: str = "ignore") -> None:
        if not isinstance(template, bytes | bytearray | memoryview):
            raise BytesFormatError(f"template must be bytes, not {type(template).__name__}")
        if mode not in _MODES:
            raise BytesFormatError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
        self.template = bytes(template)
        self.mode = mode
        # re.split with one group alternates literal, name, literal, ...; the
        # odd positions are field names, already decoded to str once here.
        pieces = _FIELD.split(self.template)
        self._parts: list[bytes | str] = [
            piece.decode("ascii") if i % 2 else piece for i, piece in enumerate(pieces) if i % 2 or piece
        ]

    def format(self, *args: Any, **kwargs: Any) -> bytes:
        """Fill the template's fields from the given arguments.

        Values may be :class:`bytes` (inserted as they are), :class:`str`
        (encoded as UTF-8) or any other object (``str()`` of it, as UTF-8).

        Args:
            *args: Values for the ``{0}``, ``{1}``, ... fields.
            **kwargs: Values for the named fields.

        Returns:
            The filled-in template.

        Raises:
            MissingFieldError: In ``'strict'`` mode, a field had no argument.
        """
        return self._render(args, kwargs, self.mode)

    def _render(self, args: Sequence[Any], kwargs: Mapping[str, Any], mode: str) -> bytes:
        out: list[bytes] = []
        for part in self._parts:
            if isinstance(part, bytes):
                out.append(part)
                continue
            found, value = _lookup(part, args, kwargs)
            if found:
                out.append(_to_bytes(value))
            elif mode == "ignore":
                out.append(b"{%s}" % part.encode("ascii"))
            elif mode == "strict":
                raise MissingFieldError(part)
            # 'remove': the field simply contributes nothing.
        return b"".join(out)

    def __repr__(self) -> str:
        return f"BytesFormat({self.template!r}, mode={self.mode!r})"


def _lookup(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[bool, Any]:
    """Find the argument for field *name*: ``(found, value)``."""
    # \w also matches non-ASCII digits in str patterns, but the template is
    # bytes, so isdigit() here sees ASCII digits only.
    if name.isdigit():
        index = int(name)
        if index < len(args):
            return True, args[index]
        return False, None
    if name in kwargs:
        return True, kwargs[name]
    return False, None


def _to_bytes(value: Any) -> bytes:
    """Turn a substituted value into bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    # Never bytes(value): for an int that would make a run of NUL bytes.
    return str(value).encode("utf-8")
