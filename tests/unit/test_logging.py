"""The key=value log line: logline, parseline, log_exception and the getters."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slimta.logging
from slimta.core import SlimtaError
from slimta.logging import (
    LogLineError,
    getHttpLogger,
    getQueueStorageLogger,
    getSocketLogger,
    getSubprocessLogger,
    log_exception,
    logline,
    parseline,
)
from slimta.logging.http import HttpLogger
from slimta.logging.queuestorage import QueueStorageLogger
from slimta.logging.socket import SocketLogger
from slimta.logging.subprocess import SubprocessLogger

# Appended to only if a parser ever evaluates a value (it must not).
CANARY: list[int] = []


def line_of(**data):
    out: list[str] = []
    logline(out.append, "t", "id1", "op", **data)
    assert len(out) == 1
    return out[0]


# ------------------------------------------------------------ the format --


def test_logline_without_data():
    out: list[str] = []
    logline(out.append, "fd", 7, "close")
    assert out == ["fd:7:close"]


def test_logline_sorts_keys_and_writes_literals():
    assert line_of(zeta=1, alpha=b"x\r\n", mid=None) == "t:id1:op alpha=b'x\\r\\n' mid=None zeta=1"


def test_logline_is_one_line_whatever_the_values():
    line = line_of(text="a\nb\rc", data=b"\n\x00", nested=["\n", {"k": "\r\n"}])
    assert "\n" not in line
    assert "\r" not in line


def test_logline_logs_other_objects_as_their_repr_string():
    class Thing:
        def __repr__(self):
            return "<Thing with spaces, 'quotes' and [brackets>"

    line = line_of(thing=Thing(), many={1, 2})
    assert parseline(line)[3] == {"thing": "<Thing with spaces, 'quotes' and [brackets>", "many": "{1, 2}"}


def test_logline_survives_a_broken_repr():
    class Broken:
        def __repr__(self):
            raise RuntimeError("nope")

    data = parseline(line_of(thing=Broken()))[3]
    assert data["thing"].startswith("<unrepresentable Broken")


def test_huge_int_round_trips():
    # Decimal repr() of this is refused by Python (int_max_str_digits).
    value = 7**20000
    assert parseline(line_of(n=value))[3]["n"] == value


def test_special_floats_round_trip():
    data = parseline(line_of(a=math.inf, b=-math.inf, c=math.nan, d=-0.0, e=[1e300, -1e-300]))[3]
    assert data["a"] == math.inf
    assert data["b"] == -math.inf
    assert math.isnan(data["c"])
    assert math.copysign(1, data["d"]) == -1
    assert data["e"] == [1e300, -1e-300]


def test_deep_nesting_still_parses():
    value: list[object] = []
    for _ in range(300):
        value = [value]
    data = parseline(line_of(deep=value))[3]
    # Beyond the depth limit the rest is logged as a string; it still parses.
    inner = data["deep"]
    depth = 0
    while isinstance(inner, list):
        inner = inner[0]
        depth += 1
    assert isinstance(inner, str)
    assert 10 < depth < 300


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("fd", "a:b", "op"), "id"),
        (("fd", "a b", "op"), "id"),
        (("", 1, "op"), "type"),
        (("f:d", 1, "op"), "type"),
        (("fd", 1, "two words"), "operation"),
        (("fd", 1, ""), "operation"),
    ],
)
def test_logline_refuses_fields_that_would_not_parse(args, problem):
    with pytest.raises(LogLineError, match=problem):
        logline(lambda line: None, *args)


@pytest.mark.parametrize("key", ["a b", "a=b", ""])
def test_logline_refuses_bad_keys(key):
    with pytest.raises(LogLineError, match="key"):
        logline(lambda line: None, "fd", 1, "op", **{key: 1})


def test_logline_skips_formatting_when_level_disabled(caplog):
    calls: list[int] = []

    class Spy:
        def __repr__(self):
            calls.append(1)
            return "spy"

    logger = logging.getLogger("test.logging.disabled")
    caplog.set_level(logging.INFO, logger=logger.name)
    logline(logger.debug, "fd", 1, "op", spy=Spy())
    assert calls == []
    assert caplog.records == []
    logline(logger.info, "fd", 1, "op", spy=Spy())
    assert calls == [1]
    assert [r.getMessage() for r in caplog.records] == ["fd:1:op spy='spy'"]


def test_logline_through_a_logger_adapter(caplog):
    adapter = logging.LoggerAdapter(logging.getLogger("test.logging.adapter"), {})
    caplog.set_level(logging.DEBUG, logger="test.logging.adapter")
    logline(adapter.debug, "fd", 1, "op", x=1)
    assert [r.getMessage() for r in caplog.records] == ["fd:1:op x=1"]


# ------------------------------------------------------------ round trip --

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary()
literals = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(scalars, inner, max_size=4)
    ),
    max_leaves=20,
)
keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
fields = st.from_regex(r"[^:\s]{1,12}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(
    type_=fields,
    typeid=fields | st.integers(),
    operation=st.from_regex(r"\S{1,12}", fullmatch=True),
    data=st.dictionaries(keys, literals, max_size=5),
)
def test_round_trip(type_, typeid, operation, data):
    out: list[str] = []
    logline(out.append, type_, typeid, operation, **data)
    assert parseline(out[0]) == (type_, str(typeid), operation, data)
    # A trailing line ending, as in a log file, is allowed.
    assert parseline(out[0] + "\r\n")[3] == data


def test_round_trip_keeps_types_apart():
    data = {"t": (1,), "l": [1], "e": (), "b": b"1", "s": "1", "i": 1, "f": 1.0, "o": True}
    parsed = parseline(line_of(**data))[3]
    assert parsed == data
    assert {k: type(v) for k, v in parsed.items()} == {k: type(v) for k, v in data.items()}


def test_parseline_reads_sets_and_complex_numbers():
    assert parseline("a:b:c s={1, 2} z=(1-2j) e=-inf")[3] == {"s": {1, 2}, "z": 1 - 2j, "e": -math.inf}


# --------------------------------------------------------- malformed input --


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("garbage", "not a slimta log line"),
        ("", "not a slimta log line"),
        ("a:b", "not a slimta log line"),
        ("a::c", "not a slimta log line"),
        (" a:b:c", "not a slimta log line"),
        ("a:b:c x='unterminated", "unterminated string"),
        ('a:b:c x="still open\\"', "unterminated string"),
        ("a:b:c x=[1, 2", "missing a closing"),
        ("a:b:c x=[1, 2)", "unbalanced"),
        ("a:b:c x=1]", "unbalanced"),
        ("a:b:c x=", "empty value"),
        ("a:b:c x=1  y=2", "expected ' key=value'"),
        ("a:b:c x=1 y", "expected ' key=value'"),
        ("a:b:c x=1 x=2", "appears twice"),
        ("a:b:c x=1\ty=2", "expected ' key=value'"),
        ("a:b:c x=foo", "Name"),
        ("a:b:c x=1+1", "BinOp"),
        ("a:b:c x=...", "not a loggable value"),
        ("a:b:c x={**y}", "unpacking"),
        ("a:b:c x={[1]:2}", "unhashable"),
        ("a:b:c x=-'s'", "expected a number"),
        ("a:b:c x=(1,2", "missing a closing"),
        ("a:b:c x=lambda:0", "not a Python literal|Lambda"),
        ("a:b:c x=1\x00", "not a Python literal"),
        ("a:b:c x=" + "[" * 500 + "]" * 500, "not a Python literal|nested"),
    ],
)
def test_malformed_lines_raise_value_error_naming_the_problem(line, problem):
    with pytest.raises(ValueError, match=problem) as info:
        parseline(line)
    assert isinstance(info.value, SlimtaError)


@pytest.mark.parametrize(
    "value",
    [
        "__import__('tests.unit.test_logging').CANARY.append(1)",
        "__import__('os').system('false')",
        "(lambda:__import__('tests.unit.test_logging').CANARY.append(1))()",
        "[__import__('tests.unit.test_logging').CANARY.append(1)]",
        "{1:__import__('tests.unit.test_logging').CANARY.append(1)}",
        "().__class__.__bases__[0].__subclasses__()",
        "f'{__import__(\"tests.unit.test_logging\").CANARY.append(1)}'",
        "[x:=1]",
    ],
)
def test_code_in_a_value_is_refused_and_never_run(value):
    with pytest.raises(ValueError, match="'x'"):
        parseline(f"a:b:c x={value}")
    assert CANARY == []


def test_parseline_refuses_bytes_input():
    with pytest.raises(LogLineError, match="must be str"):
        parseline(b"a:b:c")  # type: ignore[arg-type]


# ----------------------------------------------------------- log_exception --


def test_log_exception_logs_once_with_traceback_and_extras(caplog):
    caplog.set_level(logging.DEBUG, logger="test.logging.exc")
    try:
        raise KeyError("missing-key")
    except KeyError:
        log_exception("test.logging.exc", envelope_id="abc")
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is None  # the traceback is in the line, not repeated
    type_, typeid, operation, data = parseline(record.getMessage())
    assert (type_, typeid, operation) == ("exception", "KeyError", "unhandled")
    assert data["envelope_id"] == "abc"
    assert data["args"] == ("missing-key",)
    assert data["message"] == "'missing-key'"
    assert "test_log_exception_logs_once" in data["traceback"]
    assert data["traceback"].count("KeyError: 'missing-key'") == 1


def test_log_exception_outside_except_does_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="test.logging.exc2")
    log_exception("test.logging.exc2")
    assert caplog.records == []


def test_log_exception_is_replaceable(monkeypatch):
    seen: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(slimta.logging, "log_exception", lambda name, **kw: seen.append((name, kw)))
    try:
        raise OSError("x")
    except OSError:
        slimta.logging.log_exception("n", a=1)
    assert seen == [("n", {"a": 1})]


# ----------------------------------------------------------------- getters --


@pytest.mark.parametrize(
    ("getter", "cls"),
    [
        (getSocketLogger, SocketLogger),
        (getSubprocessLogger, SubprocessLogger),
        (getQueueStorageLogger, QueueStorageLogger),
        (getHttpLogger, HttpLogger),
    ],
)
def test_getters_wrap_the_named_logger(getter, cls):
    wrapped = getter("test.logging.getter")
    assert isinstance(wrapped, cls)
    assert wrapped.logger is logging.getLogger("test.logging.getter")
