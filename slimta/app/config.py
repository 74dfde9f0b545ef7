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

_LEVELS = ("debug", "info", "warning", "error", "critical")
_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its kind, default and a line of help.

    ``kind`` is one of ``bool``, ``int``, ``float``, ``str``, ``strlist``
    (a list of strings; a single string is accepted as a list of one) and
    ``table`` (a table of strings).
    """

    kind: str
    default: Any
    help: str


def _k(kind: str, default: Any, text: str) -> Key:
    return Key(kind, default, text)


_PROCESS = {
    "hostname": _k("str", "", "this node's name; empty: the machine's fully qualified name"),
    "user": _k("str", "", "user to switch to after binding the listeners (empty: stay)"),
    "group": _k("str", "", "group to switch to (empty: the user's primary group)"),
    "pid_file": _k("str", "", "pid file written while running (empty: none)"),
    "daemon": _k("bool", False, "detach from the terminal (as --daemon)"),
    "log_file": _k("str", "", "append logs to this file (empty: standard error)"),
    "log_level": _k("str", "info", "debug, info, warning, error or critical"),
    "socket_error_log_level": _k("str", "error", "level of socket error lines"),
    "grace_period": _k("float", 10.0, "seconds sessions get to finish at shutdown"),
    "control_socket": _k("str", "./var/control.sock", "Unix socket for slimta queue (empty: none)"),
    "metrics": _k("str", "", "host:port of the Prometheus endpoint (empty: off)"),
}

_EDGE_COMMON = {
    "name": _k("str", "", "the edge's name (default edge<N>)"),
    "type": _k("str", "smtp", "smtp or http"),
    "listen": _k("strlist", _REQUIRED, "host:port addresses to listen on"),
    "queue": _k("str", "", "the queue to hand messages to (default: the first)"),
    "hostname": _k("str", "", "name in the banner and Received (default: process.hostname)"),
    "tls_cert": _k("str", "", "PEM certificate chain file"),
    "tls_key": _k("str", "", "PEM private key file"),
    "max_size": _k("int", 10485760, "largest message accepted, in octets"),
    "max_sessions": _k("int", 0, "most concurrent sessions (0: no limit)"),
    "proxy_protocol": _k("bool", False, "expect a PROXY protocol header (coming)"),
}
_EDGE_TYPES = {
    "smtp": {
        "implicit_tls": _k("bool", False, "TLS from the first byte (port 465 style)"),
        "auth": _k("bool", False, "offer AUTH PLAIN/LOGIN (over TLS only)"),
        "credentials": _k("str", "", "file of user:passlib-hash lines"),
        "require_auth": _k("bool", False, "refuse MAIL until the client authenticated"),
        "relay_networks": _k("strlist", [], "client networks that may relay without AUTH"),
        "command_timeout": _k("float", 300.0, "seconds to wait for each command"),
        "data_timeout": _k("float", 600.0, "seconds for a whole message's data"),
        "sender_deny": _k("strlist", [], "senders refused at MAIL (address or @domain)"),
        "recipient_deny": _k("strlist", [], "recipients refused at RCPT (address or @domain)"),
        "dnsbl": _k("strlist", [], "DNS blocklists checked at connect (coming)"),
        "spf": _k("bool", False, "check SPF at MAIL (coming)"),
    },
    "http": {
        "uri_pattern": _k("str", "", "only request paths matching this regex"),
    },
}

_QUEUE_COMMON = {
    "name": _k("str", "", "the queue's name (default queue<N>)"),
    "type": _k("str", "disk", "disk, memory or redis"),
    "local_domains": _k("strlist", None, "domains delivered by local_relay (default: localhost, hostname)"),
    "local_relay": _k("str", "", "relay for local domains (empty: none, refused)"),
    "relay": _k("str", "", "relay for other domains (empty: refused with 550 5.7.1)"),
    "retry_initial": _k("float", 300.0, "seconds before the first retry"),
    "retry_max": _k("float", 4000.0, "longest wait between retries"),
    "retry_factor": _k("float", 2.0, "growth of each wait"),
    "lifetime": _k("float", 432000.0, "bounce messages older than this (seconds)"),
    "relay_timeout": _k("float", 600.0, "seconds one delivery attempt may take"),
    "relay_pool": _k("int", 0, "most delivery attempts at once (0: no limit)"),
    "direct_local": _k("bool", True, "deliver into a maildir local_relay before the 250 (no queue file)"),
    "policies": _k(
        "strlist",
        ["add_date_header", "add_message_id_header", "add_received_header"],
        "queue policies, in order",
    ),
    "forward": _k("table", {}, "recipient rewrites: regex = replacement"),
}
_QUEUE_TYPES: dict[str, dict[str, Key]] = {
    "disk": {"path": _k("str", "./var/queue", "spool directory")},
    "memory": {},
    "redis": {
        "redis_url": _k("str", "redis://127.0.0.1:6379/0", "redis:// or rediss:// URL"),
        "redis_prefix": _k("str", "slimta:", "prefix of every key"),
    },
}

_SMTP_CLIENT = {
    "ehlo_as": _k("str", "", "name sent in EHLO (default: process.hostname)"),
    "tls_required": _k("bool", False, "fail unless STARTTLS succeeds"),
    "tls_verify": _k("bool", True, "verify the server's certificate"),
    "tls_ca_file": _k("str", "", "CA bundle for verification (default: system)"),
    "connect_timeout": _k("float", 30.0, "seconds to connect"),
    "command_timeout": _k("float", 60.0, "seconds for each reply"),
    "data_timeout": _k("float", 0.0, "seconds for the message data (0: no limit)"),
    "idle_timeout": _k("float", 10.0, "keep idle connections this long"),
    "pool_size": _k("int", 0, "most connections at once (0: no limit)"),
}
_RELAY_COMMON = {
    "name": _k("str", "", "the relay's name (default relay<N>)"),
    "type": _k("str", _REQUIRED, "mx, static, lmtp, http, pipe, maildrop, dovecot, maildir, blackhole"),
}
_PROGRAM = {
    "program": _k("str", "", "the program (default: found on PATH)"),
    "timeout": _k("float", 60.0, "seconds the program may run"),
    "extra_args": _k("strlist", [], "arguments added to the command"),
}
_RELAY_TYPES: dict[str, dict[str, Key]] = {
    "mx": dict(_SMTP_CLIENT),
    "static": {
        "host": _k("str", _REQUIRED, "the smarthost"),
        "port": _k("int", 25, "its port"),
        "tls_immediately": _k("bool", False, "implicit TLS (port 465)"),
        "auth_user": _k("str", "", "user name for AUTH at the smarthost"),
        "auth_password_file": _k("str", "", "file holding the password"),
        **_SMTP_CLIENT,
    },
    "lmtp": {
        "host": _k("str", "localhost", "the LMTP server"),
        "port": _k("int", 24, "its port"),
        **_SMTP_CLIENT,
    },
    "http": {
        "url": _k("str", _REQUIRED, "http:// or https:// URL to POST to"),
        "tls_verify": _k("bool", True, "verify the server's certificate"),
        "tls_ca_file": _k("str", "", "CA bundle for verification"),
        "ehlo_as": _k("str", "", "name sent in X-Ehlo"),
        "timeout": _k("float", 60.0, "seconds for each delivery"),
        "pool_size": _k("int", 0, "most connections at once (0: no limit)"),
    },
    "pipe": {
        "args": _k("strlist", _REQUIRED, "the command and its arguments ({sender}, {recipient}...)"),
        "timeout": _k("float", 60.0, "seconds the program may run"),
        "per_recipient": _k("bool", False, "run once per recipient"),
    },
    "maildrop": dict(_PROGRAM),
    "dovecot": dict(_PROGRAM),
    "maildir": {
        "path": _k("str", "./var/mail", "base directory, one Maildir per user"),
        "create": _k("bool", True, "create missing Maildirs"),
    },
    "blackhole": {},
}

#: The whole schema: ``{section: (common keys, {type: keys})}``.
SCHEMA: dict[str, tuple[dict[str, Key], dict[str, dict[str, Key]]]] = {
    "process": (_PROCESS, {}),
    "edge": (_EDGE_COMMON, _EDGE_TYPES),
    "queue": (_QUEUE_COMMON, _QUEUE_TYPES),
    "relay": (_RELAY_COMMON, _RELAY_TYPES),
}
_PATH_KEYS = frozenset(
    {"pid_file", "log_file", "control_socket", "tls_cert", "tls_key", "credentials", "path"}
    | {"tls_ca_file", "auth_password_file"}
)


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
