"""The ``type:id:operation key=value ...`` log line: writing and parsing.

Theory of operation
-------------------
Every structured slimta log message is one line::

    fd:7:recv data=b'EHLO there\\r\\n'

``type`` and ``id`` may not contain ``:`` or whitespace, ``operation`` may not
contain whitespace.  Each value is written as a Python literal, so a reader
gets back the very value that was logged.  :func:`format_line` only ever
writes literals that :func:`parse_value` accepts: values of other types are
logged as the string of their ``repr()``, so a line written by us always
parses again.

Parsing never evaluates anything.  The line is cut into ``key=value`` items by
a small scanner that knows about quotes and brackets, and each value goes
through :func:`ast.parse` (which only builds a tree) and a converter that
accepts a short list of node types: constants, tuples, lists, sets, dicts, a
unary minus, complex sums and the names ``inf`` and ``nan`` (which is how
``repr()`` spells those floats).  Anything else -- a call, an attribute, a
subscript, a lambda -- is refused with :class:`LogLineError`.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from slimta.core import SlimtaError

__all__ = ["LogLineError", "format_line", "is_enabled", "parse_line", "parse_value"]


class LogLineError(SlimtaError, ValueError):
    """A log line, or a field given to :func:`logline`, is malformed.

    It is a :class:`ValueError` as well, as the 4.0 ``parseline`` promised.

    .. versionadded:: 0.1.0
    """


# ---------------------------------------------------------------- writing --

_FIELD_RE = re.compile(r"[^:\s]+")
_OPERATION_RE = re.compile(r"\S+")
_KEY_RE = re.compile(r"[^\s=]+")

# Containers nested deeper than this are logged as the string of their repr():
# the parser (CPython's own) refuses expressions nested about 200 deep.
_MAX_DEPTH = 64


def _int_literal(value: int) -> str:
    try:
        return repr(value)
    except ValueError:
        # Python refuses decimal conversion of very large ints (the
        # int_max_str_digits guard); hex has no such limit and parses back.
        return hex(value)


def _literal(value: object, depth: int = 0) -> str:
    kind = type(value)
    # Exact type checks on purpose: a str or int subclass (an enum, say) may
    # have a repr() that is not a literal at all.
    if kind is str or kind is bytes or kind is float or kind is bool or value is None:
        return repr(value)
    if kind is int:
        return _int_literal(value)  # type: ignore[arg-type]
    if depth < _MAX_DEPTH:
        if kind is tuple:
            items = [_literal(item, depth + 1) for item in value]  # type: ignore[attr-defined]
            if len(items) == 1:
                return f"({items[0]},)"
            return "(" + ", ".join(items) + ")"
        if kind is list:
            return "[" + ", ".join([_literal(item, depth + 1) for item in value]) + "]"  # type: ignore[attr-defined]
        if kind is dict:
            pairs = [
                f"{_literal(key, depth + 1)}: {_literal(item, depth + 1)}"
                for key, item in value.items()  # type: ignore[attr-defined]
            ]
            return "{" + ", ".join(pairs) + "}"
    # Anything else is logged as the text of its repr(), so that the line
    # still parses; the reader gets a str back.
    try:
        text = repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break logging
        text = f"<unrepresentable {kind.__name__}: {exc!r}>"
    return repr(text)


def _check_field(name: str, text: str, pattern: re.Pattern[str]) -> None:
    if pattern.fullmatch(text) is None:
        raise LogLineError(f"log line {name} {text!r} is empty or contains ':' or whitespace")


def format_line(type_: object, typeid: object, operation: object, data: dict[str, Any]) -> str:
    """Build one log line; see :func:`slimta.logging.logline`."""
    type_text, id_text, op_text = str(type_), str(typeid), str(operation)
    _check_field("type", type_text, _FIELD_RE)
    _check_field("id", id_text, _FIELD_RE)
    _check_field("operation", op_text, _OPERATION_RE)
    head = f"{type_text}:{id_text}:{op_text}"
    if not data:
        return head
    parts = [head]
    for key in sorted(data):
        # isidentifier() is the cheap common case (keyword arguments); the
        # regex only runs for odd keys passed through **{...}.
        if not key.isidentifier() and _KEY_RE.fullmatch(key) is None:
            raise LogLineError(f"log line key {key!r} is empty or contains '=' or whitespace")
        parts.append(f"{key}={_literal(data[key])}")
    return " ".join(parts)


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def is_enabled(log: Callable[..., object]) -> bool:
    """Tell whether calling ``log`` (e.g. ``logger.debug``) would emit anything.

    Only bound level methods of a :class:`logging.Logger` or
    :class:`logging.LoggerAdapter` can be judged; any other callable is
    assumed to want every line.
    """
    owner = getattr(log, "__self__", None)
    if isinstance(owner, logging.Logger | logging.LoggerAdapter):
        level = _METHOD_LEVELS.get(getattr(log, "__name__", ""))
        if level is not None:
            return owner.isEnabledFor(level)
    return True


# ---------------------------------------------------------------- parsing --

_HEAD_RE = re.compile(r"([^:\s]+):([^:\s]+):(\S+)")
_ITEM_KEY_RE = re.compile(r" ([^\s=]+)=")
# Outside a string literal, only quotes, brackets and whitespace matter.
_OUTSIDE_RE = re.compile(r"[\s'\"()\[\]{}]")
_SINGLE_END_RE = re.compile(r"['\\]")
_DOUBLE_END_RE = re.compile(r"[\"\\]")
_OPENERS = {"(": ")", "[": "]", "{": "}"}


def _scan_value(line: str, start: int, key: str) -> int:
    """Return the index just past the literal that begins at ``start``."""
    closers: list[str] = []
    pos = start
    while True:
        match = _OUTSIDE_RE.search(line, pos)
        if match is None:
            pos = len(line)
            break
        char = match.group()
        pos = match.start()
        if char.isspace():
            if not closers:
                break
            pos += 1
        elif char in _OPENERS:
            closers.append(_OPENERS[char])
            pos += 1
        elif char in ")]}":
            if not closers or closers.pop() != char:
                raise LogLineError(f"value of {key!r} has an unbalanced {char!r} at column {pos}")
            pos += 1
        else:
            pos = _skip_string(line, pos, key)
    if closers:
        raise LogLineError(f"value of {key!r} is missing a closing {closers[-1]!r}")
    if pos == start:
        raise LogLineError(f"key {key!r} has an empty value at column {start}")
    return pos


def _skip_string(line: str, quote_at: int, key: str) -> int:
    """Return the index just past the string literal whose quote is at ``quote_at``."""
    end_re = _SINGLE_END_RE if line[quote_at] == "'" else _DOUBLE_END_RE
    pos = quote_at + 1
    while True:
        match = end_re.search(line, pos)
        if match is None:
            raise LogLineError(f"value of {key!r} has an unterminated string starting at column {quote_at}")
        if match.group() == "\\":
            pos = match.end() + 1  # skip the escaped character, whatever it is
        else:
            return match.end()


_NAMED_FLOATS = {"inf": math.inf, "nan": math.nan}


def _convert(node: ast.expr) -> object:
    """Turn a whitelisted expression tree into its value; refuse anything else."""
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis:
            raise LogLineError("'...' is not a loggable value")
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_convert(elt) for elt in node.elts)
    if isinstance(node, ast.List):
        return [_convert(elt) for elt in node.elts]
    if isinstance(node, ast.Set):
        return _hashing(lambda: {_convert(elt) for elt in node.elts})
    if isinstance(node, ast.Dict):
        keys = [key for key in node.keys if key is not None]
        if len(keys) != len(node.keys):
            raise LogLineError("'**' unpacking is not a loggable value")
        return _hashing(lambda: {_convert(k): _convert(v) for k, v in zip(keys, node.values, strict=True)})
    if isinstance(node, ast.Name) and node.id in _NAMED_FLOATS:
        return _NAMED_FLOATS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _number(node.operand)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        # repr() writes complex numbers as (1+2j) or (-0-1j).
        left, right = _number(node.left), _number(node.right)
        if isinstance(right, complex) and not isinstance(left, complex):
            return left + right if isinstance(node.op, ast.Add) else left - right
    raise LogLineError(f"{type(node).__name__} expressions are not loggable values")


def _number(node: ast.expr) -> int | float | complex:
    value = _convert(node)
    if isinstance(value, int | float | complex) and not isinstance(value, bool):
        return value
    raise LogLineError(f"expected a number, got {type(value).__name__}")


def _hashing(build: Callable[[], object]) -> object:
    try:
        return build()
    except TypeError as exc:
        raise LogLineError(f"unhashable set member or dict key: {exc}") from None


def parse_value(text: str) -> object:
    """Parse one literal as written by :func:`format_line`, evaluating nothing.

    Raises:
        LogLineError: ``text`` is not a literal of a supported type.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise LogLineError(f"{text[:80]!r} is not a Python literal ({type(exc).__name__})") from None
    try:
        return _convert(tree.body)
    except RecursionError:
        raise LogLineError(f"{text[:80]!r} is nested too deeply") from None


def parse_line(line: str) -> tuple[str, str, str, dict[str, Any]]:
    """Split a log line into its parts; see :func:`slimta.logging.parseline`."""
    if not isinstance(line, str):
        raise LogLineError(f"a log line must be str, not {type(line).__name__}")
    line = line.rstrip("\r\n")
    head = _HEAD_RE.match(line)
    if head is None:
        raise LogLineError(f"not a slimta log line (expected 'type:id:operation'): {line[:80]!r}")
    type_, typeid, operation = head.groups()
    data: dict[str, Any] = {}
    pos = head.end()
    while pos < len(line):
        item = _ITEM_KEY_RE.match(line, pos)
        if item is None:
            raise LogLineError(f"expected ' key=value' at column {pos} of {line[:80]!r}")
        key = item.group(1)
        if key in data:
            raise LogLineError(f"key {key!r} appears twice")
        end = _scan_value(line, item.end(), key)
        try:
            data[key] = parse_value(line[item.end() : end])
        except LogLineError as exc:
            raise LogLineError(f"bad value for key {key!r}: {exc}") from None
        pos = end
    return type_, typeid, operation, data
