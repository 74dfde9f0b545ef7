"""The tables of the ``slimta`` command's configuration schema.

Every key of every section (``[process]``, ``[[edge]]``, ``[[queue]]``,
``[[relay]]``, common and per type) with its kind, default and a line of
help, as :class:`Key` values.  The tables are data that grows with each
feature, the reading and checking machinery in :mod:`slimta.app.config`
is code that rarely changes, so they live apart; :mod:`slimta.app.config`
assembles them into its public :data:`~slimta.app.config.SCHEMA` (and
re-exports :class:`Key`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Key"]

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

_PATH_KEYS = frozenset(
    {"pid_file", "log_file", "control_socket", "tls_cert", "tls_key", "credentials", "path"}
    | {"tls_ca_file", "auth_password_file"}
)
