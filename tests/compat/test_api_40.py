"""Lock the python-slimta 4.0 public API: import paths, names and signatures.

A script written against python-slimta 4.0 must run unchanged, so the
parameter names, their order and their defaults are facts.  Each entry below
is checked with :func:`inspect.signature`; a rename, a reordering or a new
required argument fails here first.  Parameters we added beyond 4.0 must
come after the 4.0 ones and have defaults (checked too).
"""

from __future__ import annotations

import importlib
import inspect
import socket

import pytest

_EMPTY = inspect.Parameter.empty

# (module, attribute, [(param, default or _EMPTY), ...]); "self" omitted.
SIGNATURES: list[tuple[str, str, list[tuple[str, object]]]] = [
    ("slimta.envelope", "Envelope", [("sender", None), ("recipients", None), ("headers", None), ("message", None)]),
    ("slimta.util", "build_ipv4_socket_creator", [("only_ports", None)]),
    (
        "slimta.util",
        "create_connection_ipv4",
        [("address", _EMPTY), ("timeout", None), ("source_address", None), ("only_ports", None)],
    ),
    (
        "slimta.util",
        "create_listeners",
        [
            ("address", _EMPTY),
            ("family", socket.AF_UNSPEC),
            ("socktype", socket.SOCK_STREAM),
            ("proto", socket.IPPROTO_IP),
        ],
    ),
    ("slimta.util.system", "daemonize", []),
    ("slimta.util.system", "redirect_stdio", [("stdout", None), ("stderr", None), ("stdin", None)]),
    ("slimta.util.system", "drop_privileges", [("user", None), ("group", None)]),
    ("slimta.util.system", "PidFile", [("filename", None)]),
    ("slimta.util.bytesformat", "BytesFormat", [("template", _EMPTY), ("mode", "ignore")]),
    ("slimta.logging", "logline", [("log", _EMPTY), ("type", _EMPTY), ("typeid", _EMPTY), ("operation", _EMPTY)]),
    ("slimta.logging", "parseline", [("line", _EMPTY)]),
    ("slimta.logging", "getSocketLogger", [("name", _EMPTY)]),
    ("slimta.logging", "getSubprocessLogger", [("name", _EMPTY)]),
    ("slimta.logging", "getQueueStorageLogger", [("name", _EMPTY)]),
    ("slimta.logging", "getHttpLogger", [("name", _EMPTY)]),
    (
        "slimta.smtp.reply",
        "Reply",
        [("code", None), ("message", None), ("command", None), ("address", None)],
    ),
    (
        "slimta.smtp.server",
        "Server",
        [
            ("socket", _EMPTY),
            ("handlers", _EMPTY),
            ("address", None),
            ("auth", False),
            ("context", None),
            ("tls_immediately", False),
            ("command_timeout", None),
            ("data_timeout", None),
        ],
    ),
    ("slimta.edge", "Edge", [("queue", _EMPTY), ("hostname", None)]),
    ("slimta.edge", "EdgeServer", [("listener", _EMPTY), ("queue", _EMPTY), ("pool", None), ("hostname", None)]),
    (
        "slimta.edge.smtp",
        "SmtpEdge",
        [
            ("listener", _EMPTY),
            ("queue", _EMPTY),
            ("pool", None),
            ("max_size", None),
            ("validator_class", None),
            ("auth", False),
            ("context", None),
            ("tls_immediately", False),
            ("command_timeout", None),
            ("data_timeout", None),
            ("hostname", None),
            ("session_class", None),
        ],
    ),
    ("slimta.edge.smtp", "SmtpValidators", [("session", _EMPTY)]),
]

# Names each 4.0 module must export (a superset is fine: we add, never remove).
EXPORTS: dict[str, set[str]] = {
    "slimta.core": {"SlimtaError"},
    "slimta.envelope": {"Envelope"},
    "slimta.util": {"build_ipv4_socket_creator", "create_connection_ipv4", "create_listeners"},
    "slimta.util.system": {"daemonize", "redirect_stdio", "drop_privileges", "PidFile"},
    "slimta.util.deque": {"BlockingDeque"},
    "slimta.util.bytesformat": {"BytesFormat"},
    "slimta.logging": {
        "log_exception",
        "parseline",
        "getSocketLogger",
        "getSubprocessLogger",
        "getQueueStorageLogger",
        "getHttpLogger",
    },
    "slimta.logging.socket": {"socket_error_log_level"},
    "slimta.smtp": {"SmtpError", "ConnectionLost", "MessageTooBig", "BadReply"},
    "slimta.smtp.reply": {
        "Reply",
        "unknown_command",
        "unknown_parameter",
        "bad_sequence",
        "bad_arguments",
        "timed_out",
        "unhandled_error",
        "connection_failed",
        "tls_failure",
        "invalid_credentials",
    },
    "slimta.smtp.extensions": {"Extensions"},
    "slimta.smtp.io": {"IO"},
    "slimta.smtp.server": {"Server"},
    "slimta.edge": {"Edge", "EdgeServer"},
    "slimta.edge.smtp": {"SmtpEdge", "SmtpValidators"},
}

# Methods users call or override, by class.
METHODS: list[tuple[str, str, set[str]]] = [
    (
        "slimta.envelope",
        "Envelope",
        {"parse", "parse_msg", "flatten", "copy", "prepend_header", "encode_7bit"},
    ),
    ("slimta.smtp.reply", "Reply", {"copy", "is_error", "code", "message", "enhanced_status_code", "raw_message"}),
    ("slimta.smtp.extensions", "Extensions", {"add", "drop", "getparam", "reset", "parse_string", "build_string"}),
    ("slimta.edge", "Edge", {"handoff", "kill"}),
    ("slimta.edge", "EdgeServer", {"handle", "start", "kill", "get"}),
]


@pytest.mark.parametrize(("module", "name", "expected"), SIGNATURES, ids=[f"{m}.{n}" for m, n, _ in SIGNATURES])
def test_signature(module: str, name: str, expected: list[tuple[str, object]]) -> None:
    obj = getattr(importlib.import_module(module), name)
    params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
    positional = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY)]
    got = [(p.name, p.default) for p in positional[: len(expected)]]
    assert got == expected
    for extra in positional[len(expected) :]:
        assert extra.default is not _EMPTY, f"{name}: new parameter {extra.name} must have a default"


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_exports(module: str) -> None:
    mod = importlib.import_module(module)
    exported = set(getattr(mod, "__all__", ()))
    missing = EXPORTS[module] - exported
    assert not missing, f"{module}.__all__ lacks {sorted(missing)}"
    for name in EXPORTS[module]:
        assert hasattr(mod, name)


@pytest.mark.parametrize(("module", "cls", "methods"), METHODS, ids=[f"{m}.{c}" for m, c, _ in METHODS])
def test_methods(module: str, cls: str, methods: set[str]) -> None:
    klass = getattr(importlib.import_module(module), cls)
    missing = {m for m in methods if not hasattr(klass, m)}
    assert not missing


def test_every_error_is_a_slimta_error() -> None:
    from slimta.core import SlimtaError

    for module in EXPORTS:
        mod = importlib.import_module(module)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if isinstance(obj, type) and issubclass(obj, Exception):
                assert issubclass(obj, SlimtaError), f"{module}.{name} is not a SlimtaError"


def test_version_from_metadata() -> None:
    import slimta

    assert slimta.__version__ != "0+unknown"
    assert slimta.__version__[0].isdigit()
