"""The ``slimta`` command's configuration: a TOML file, checked key by key.

.. versionadded:: 0.1.0

The file has one ``[process]`` table and arrays of ``[[edge]]``,
``[[queue]]`` and ``[[relay]]`` tables, the concepts of the slimta app's
YAML file.  Every key has a type and a default (see :data:`SCHEMA` and
``docs/command.rst``); a key that is not in the schema, a value of the
wrong type, a bad port, a missing certificate or an unreadable credentials
file is a :class:`ConfigError` whose message names the file, the line and
the key.  Nothing here binds a socket or creates a directory: the whole
configuration is checked before :mod:`slimta.app.build` assembles anything.

Theory of operation: :mod:`tomllib` parses the text but forgets where each
key was, so :func:`_locate` scans the lines once more and records the line
of every table header and ``key =`` it sees, per table instance; errors look
their line up there.

The schema's tables (every key's kind, default and help) live in
``slimta.app._schema``; this module assembles them into :data:`SCHEMA` and
keeps the reading and checking.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from typing import Any

from gevent import socket as gsocket

from slimta.app._schema import (
    _EDGE_COMMON,
    _EDGE_TYPES,
    _LEVELS,
    _PATH_KEYS,
    _PROCESS,
    _QUEUE_COMMON,
    _QUEUE_TYPES,
    _RELAY_COMMON,
    _RELAY_TYPES,
    _REQUIRED,
    Key,
)
from slimta.core import SlimtaError

__all__ = [
    "CREDENTIALS_PATH",
    "DEFAULT_CONFIG",
    "SCHEMA",
    "Config",
    "ConfigError",
    "Section",
    "default_config",
    "dump_config",
    "load_config",
    "parse_address",
    "parse_config",
    "read_credentials",
]

#: The credentials file of the embedded default: when it exists, the default
#: also runs a submission edge with AUTH on 127.0.0.1:1587.
CREDENTIALS_PATH = "./var/credentials"

#: The embedded default configuration, used when ``-c`` is not given.
DEFAULT_CONFIG = """\
# slimta's embedded default: a single node for local testing.
[process]
log_level = "info"

[[edge]]
name = "smtp"
type = "smtp"
listen = "127.0.0.1:2525"
queue = "main"

[[queue]]
name = "main"
type = "disk"
path = "./var/queue"
local_relay = "local"

[[relay]]
name = "local"
type = "maildir"
path = "./var/mail"
"""

_SUBMISSION = """
[[edge]]
name = "submission"
type = "smtp"
listen = "127.0.0.1:1587"
queue = "main"
auth = true
require_auth = true
credentials = "{credentials}"
tls_cert = "{cert}"
tls_key = "{key}"
"""

#: The whole schema: ``{section: (common keys, {type: keys})}``.
SCHEMA: dict[str, tuple[dict[str, Key], dict[str, dict[str, Key]]]] = {
    "process": (_PROCESS, {}),
    "edge": (_EDGE_COMMON, _EDGE_TYPES),
    "queue": (_QUEUE_COMMON, _QUEUE_TYPES),
    "relay": (_RELAY_COMMON, _RELAY_TYPES),
}


class ConfigError(SlimtaError):
    """The configuration cannot be used; the message says where and why.

    Args:
        message: What is wrong.
        source: The file name (or ``<default>``).
        line: The line, when known.
    """

    def __init__(self, message: str, source: str = "<config>", line: int | None = None) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")
        self.source = source
        self.line = line


@dataclass
class Section:
    """One table of the file (``[process]`` or one ``[[edge]]``...), with defaults filled in."""

    kind: str
    index: int | None
    values: dict[str, Any]
    source: str
    lines: dict[str, int] = field(default_factory=dict)
    line: int | None = None

    @property
    def name(self) -> str:
        """The section's ``name`` key (``process`` for the process table)."""
        return str(self.values.get("name", self.kind))

    @property
    def label(self) -> str:
        """How messages refer to it: ``edge 'smtp'`` or ``process``."""
        return self.kind if self.index is None else f"{self.kind} {self.name!r}"

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def error(self, key: str | None, message: str) -> ConfigError:
        """A :class:`ConfigError` pointing at ``key`` (or the table header)."""
        line = self.lines.get(key, self.line) if key else self.line
        where = f"{self.label}: {key}" if key else self.label
        return ConfigError(f"{where}: {message}", self.source, line)


@dataclass
class Config:
    """A parsed and checked configuration."""

    source: str
    process: Section
    edges: list[Section]
    queues: list[Section]
    relays: list[Section]

    @property
    def hostname(self) -> str:
        """This node's name."""
        return str(self.process["hostname"])

    def queue(self, name: str) -> Section:
        """The queue section called ``name``."""
        return next(q for q in self.queues if q.name == name)

    def relay(self, name: str) -> Section:
        """The relay section called ``name``."""
        return next(r for r in self.relays if r.name == name)


# -- reading -------------------------------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\"-]+)\s*\]\]?")
_KEYLINE = re.compile(r"\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")

LineMap = dict[tuple[str | None, int | None, str | None], int]


def _locate(text: str) -> LineMap:
    """Map ``(section, index, key)`` to its line; ``key=None`` is the header."""
    found: LineMap = {}
    counts: dict[str, int] = {}
    section: str | None = None
    index: int | None = None
    prefix: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        header = _HEADER.match(raw)
        if header:
            parts = header.group(2).replace('"', "").split(".")
            section, prefix = parts[0], (parts[1] if len(parts) > 1 else None)
            if header.group(1) == "[[":
                counts[section] = counts.get(section, 0) + 1
            index = counts[section] - 1 if section in counts else None
            found.setdefault((section, index, prefix), number)
            continue
        key = _KEYLINE.match(raw)
        if key:
            found.setdefault((section, index, prefix or key.group(1).strip("\"'")), number)
    return found


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and check the configuration file at ``path``.

    Raises:
        ConfigError: The file cannot be read, is not TOML, or is invalid.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the configuration: {exc}", source) from exc
    return parse_config(text, source)


def default_config() -> Config:
    """The embedded default (plus the submission edge when credentials exist)."""
    text = DEFAULT_CONFIG
    if os.path.exists(CREDENTIALS_PATH):
        from slimta.app import _selfsigned

        cert, key = _selfsigned.ensure("./var/tls")
        text += _SUBMISSION.format(credentials=CREDENTIALS_PATH, cert=cert, key=key)
    return parse_config(text, "<default>")


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and check configuration text.

    Args:
        text: The TOML document.
        source: The name used in error messages.

    Raises:
        ConfigError: The first problem found.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source) from exc
    lines = _locate(text)
    for key, value in data.items():
        if key not in SCHEMA:
            raise ConfigError(f"unknown section {key!r}", source, lines.get((key, None, None)))
        is_array = key != "process"
        if is_array != isinstance(value, list):
            shape = f"[[{key}]]" if is_array else f"[{key}]"
            raise ConfigError(f"{key!r} must be written as {shape}", source, lines.get((key, None, None)))
    process = _section("process", None, data.get("process", {}), source, lines)
    if not process["hostname"]:
        # gevent's getfqdn: a reload runs on the hub, and a slow resolver
        # must not stall the sessions meanwhile.
        process.values["hostname"] = gsocket.getfqdn()
    sections = {
        kind: [_section(kind, i, table, source, lines) for i, table in enumerate(data.get(kind, []))]
        for kind in ("edge", "queue", "relay")
    }
    config = Config(source, process, sections["edge"], sections["queue"], sections["relay"])
    from slimta.app import _checks

    _checks.check(config)
    return config


def _section(kind: str, index: int | None, table: Any, source: str, lines: LineMap) -> Section:
    section = Section(kind, index, {}, source, line=lines.get((kind, index, None)))
    section.lines = {key: line for (s, i, key), line in lines.items() if s == kind and i == index and key}
    if not isinstance(table, dict):
        raise section.error(None, "must be a table")
    if index is not None:
        # Known before the other keys, so that their errors can name it.
        name = table.get("name")
        section.values["name"] = name if isinstance(name, str) and name else f"{kind}{index}"
    common, by_type = SCHEMA[kind]
    keys = dict(common)
    if by_type:
        kind_type = table.get("type", common["type"].default)
        if kind_type is _REQUIRED:
            raise section.error(None, "the key 'type' is required")
        if kind_type not in by_type:
            raise section.error("type", f"unknown type {kind_type!r} (one of: {', '.join(by_type)})")
        keys.update(by_type[kind_type])
    for key in table:
        if key not in keys:
            hint = _other_type_hint(kind, key)
            raise section.error(key, f"unknown key {key!r}{hint}")
    for key, spec in keys.items():
        if key == "name" and index is not None and key not in table:
            continue
        if key in table:
            section.values[key] = _coerce(section, key, spec, table[key])
        elif spec.default is _REQUIRED:
            raise section.error(None, f"the key {key!r} is required")
        else:
            section.values[key] = _copy(spec.default)
    for key in _PATH_KEYS & set(section.values):
        if section.values[key]:
            section.values[key] = os.path.abspath(section.values[key])
    return section


def _other_type_hint(kind: str, key: str) -> str:
    types = [name for name, keys in SCHEMA[kind][1].items() if key in keys]
    return f" (used only by type {', '.join(types)})" if types else ""


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _coerce(section: Section, key: str, spec: Key, value: Any) -> Any:
    kind = spec.kind
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise section.error(key, f"must not be negative, got {value}")
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise section.error(key, f"must not be negative, got {value}")
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "strlist":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    if kind == "table" and isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    wanted = {
        "bool": "true or false",
        "int": "an integer",
        "float": "a number",
        "str": "a string",
        "strlist": "a string or a list of strings",
        "table": "a table of strings",
    }[kind]
    raise section.error(key, f"must be {wanted}, got {value!r}")


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``, or ``:port`` for ``default_host``).

    Raises:
        ValueError: The text is not an address, or the port is not 1-65535.
    """
    match = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)|([^:\[\]]*):([0-9]+)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not host:port")
    host = match.group(1) or match.group(3) or default_host
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {text!r} is out of range (1-65535)")
    return host, port


def read_credentials(path: str) -> dict[str, str]:
    """Read a credentials file: ``user:secret`` lines, ``#`` comments.

    The secret is normally a passlib hash made with ``slimta passwd``.

    Raises:
        ConfigError: The file cannot be read or a line is malformed.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the credentials file: {exc}", path) from exc
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, secret = line.partition(":")
        if not sep or not user or not secret:
            raise ConfigError("expected user:hash (make one with `slimta passwd`)", path, number)
        users[user] = secret
    return users


def check_tls_files(section: Section) -> ssl.SSLContext | None:
    """Load the section's certificate and key into a server SSLContext.

    Returns:
        The context, or None when the section has no ``tls_cert``.

    Raises:
        ConfigError: A file is missing, unreadable or not a matching pair.
    """
    cert, key = section["tls_cert"], section["tls_key"]
    if not cert and not key:
        return None
    if not cert or not key:
        missing = "tls_key" if cert else "tls_cert"
        raise section.error(missing, "tls_cert and tls_key go together")
    for name in ("tls_cert", "tls_key"):
        path = section[name]
        if not os.path.isfile(path):
            raise section.error(name, f"file {path!r} does not exist")
        if not os.access(path, os.R_OK):
            raise section.error(name, f"file {path!r} is not readable")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise section.error("tls_cert", f"cannot load {cert!r} with {key!r}: {exc}") from exc
    return context


def parse_network(section: Section, key: str, text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse one network of ``relay_networks`` (refusing the whole Internet)."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise section.error(key, f"{text!r} is not an address or network") from exc
    if network.prefixlen == 0:
        raise section.error(key, f"{text!r} would make this node an open relay")
    return network


def dump_config(config: Config) -> str:
    """The effective configuration (every key, defaults included) as TOML."""
    out = [f"# effective configuration from {config.source}", "[process]"]
    out += [f"{key} = {_toml(value)}" for key, value in config.process.values.items()]
    for kind, sections in (("edge", config.edges), ("queue", config.queues), ("relay", config.relays)):
        for section in sections:
            out += ["", f"[[{kind}]]"]
            out += [f"{key} = {_toml(value)}" for key, value in section.values.items()]
    return "\n".join(out) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return _toml(str(value))


LEVELS = _LEVELS
