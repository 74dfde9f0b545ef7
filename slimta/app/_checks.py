"""Consistency checks of a parsed configuration (files, names, ports, loops).

Everything here only reads: no socket is bound, no directory created.
"""

from __future__ import annotations

import grp
import importlib.util
import ipaddress
import os
import pwd
import re
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from slimta.app.config import (
    LEVELS,
    ConfigError,
    Section,
    check_tls_files,
    parse_address,
    parse_network,
    read_credentials,
)

if TYPE_CHECKING:
    from slimta.app.config import Config

__all__ = ["POLICIES", "check"]

#: The queue policies a config may name.
POLICIES = (
    "add_date_header",
    "add_message_id_header",
    "add_received_header",
    "recipient_split",
    "recipient_domain_split",
)
# Reserved keys: the library module each one will use.
_COMING = {
    "proxy_protocol": "slimta.util.proxyproto",
    "dnsbl": "slimta.util.dnsbl",
    "spf": "slimta.util.spf",
}


def check(config: Config) -> None:
    """Raise :class:`ConfigError` for the first inconsistency in ``config``."""
    _check_process(config.process)
    for kind, sections in (("edge", config.edges), ("queue", config.queues), ("relay", config.relays)):
        seen: set[str] = set()
        for section in sections:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", section.name):
                raise section.error("name", f"{section.name!r}: use letters, digits, '_', '.' and '-' only")
            if section.name in seen:
                raise section.error("name", f"another {kind} is already called {section.name!r}")
            seen.add(section.name)
    for relay in config.relays:
        _check_relay(relay)
    for queue in config.queues:
        _check_queue(config, queue)
    listeners: dict[tuple[str, int], str] = {}
    for edge in config.edges:
        _check_edge(config, edge, listeners)
    _check_loops(config, listeners)


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _check_dir_of(section: Section, key: str) -> None:
    path = section[key]
    if path and not os.path.isdir(os.path.dirname(path)):
        raise section.error(key, f"the directory of {path!r} does not exist")


def _check_process(process: Section) -> None:
    for key in ("log_level", "socket_error_log_level"):
        if process[key].lower() not in LEVELS:
            raise process.error(key, f"{process[key]!r} is not one of {', '.join(LEVELS)}")
    if process["user"]:
        try:
            pwd.getpwnam(process["user"]) if not process["user"].isdigit() else None
        except KeyError:
            raise process.error("user", f"unknown user {process['user']!r}") from None
    if process["group"]:
        try:
            grp.getgrnam(process["group"]) if not process["group"].isdigit() else None
        except KeyError:
            raise process.error("group", f"unknown group {process['group']!r}") from None
    for key in ("pid_file", "log_file"):
        _check_dir_of(process, key)
    if len(process["control_socket"].encode()) > 100:
        raise process.error("control_socket", "path too long for a Unix socket (100 bytes at most)")
    if process["metrics"]:
        try:
            parse_address(process["metrics"])
        except ValueError as exc:
            raise process.error("metrics", str(exc)) from None
        if not _available("prometheus_client"):
            raise process.error(
                "metrics", "needs the prometheus_client package (pip install prometheus_client)"
            )


def _check_edge(config: Config, edge: Section, listeners: dict[tuple[str, int], str]) -> None:
    for text in edge["listen"]:
        try:
            address = parse_address(text)
        except ValueError as exc:
            raise edge.error("listen", str(exc)) from None
        if address in listeners:
            raise edge.error("listen", f"{text} is already used by edge {listeners[address]!r}")
        listeners[address] = edge.name
    if not edge["listen"]:
        raise edge.error("listen", "needs at least one address")
    if not config.queues:
        raise edge.error(None, "there is no [[queue]] to hand messages to")
    if not edge["queue"]:
        edge.values["queue"] = config.queues[0].name
    elif edge["queue"] not in {q.name for q in config.queues}:
        raise edge.error("queue", f"no queue is called {edge['queue']!r}")
    check_tls_files(edge)
    for key, module in _COMING.items():
        if edge.values.get(key):
            # The library parts exist (or are coming); the command does not
            # wire them yet, and a silently ignored security setting is worse
            # than a refusal.
            raise edge.error(key, f"not wired into the slimta command yet (use {module} from a script)")
    _check_edge_options(edge)


def _check_edge_options(edge: Section) -> None:
    if edge["type"] == "http":
        if edge["uri_pattern"]:
            try:
                re.compile(edge["uri_pattern"])
            except re.error as exc:
                raise edge.error("uri_pattern", f"not a regular expression: {exc}") from None
        return
    if edge["implicit_tls"] and not edge["tls_cert"]:
        raise edge.error("implicit_tls", "needs tls_cert and tls_key")
    if edge["auth"] or edge["require_auth"]:
        if not edge["credentials"]:
            raise edge.error("credentials", "auth needs a credentials file (make lines with `slimta passwd`)")
        if not edge["tls_cert"]:
            raise edge.error(
                "auth", "AUTH needs TLS (tls_cert and tls_key): PLAIN and LOGIN are refused without it"
            )
        if not edge["auth"]:
            raise edge.error("require_auth", "needs auth = true")
    if edge["credentials"]:
        try:
            read_credentials(edge["credentials"])
        except ConfigError as exc:
            raise edge.error("credentials", str(exc)) from None
    for text in edge["relay_networks"]:
        parse_network(edge, "relay_networks", text)


def _check_queue(config: Config, queue: Section) -> None:
    relays = {r.name for r in config.relays}
    for key in ("local_relay", "relay"):
        if queue[key] and queue[key] not in relays:
            raise queue.error(key, f"no relay is called {queue[key]!r}")
    if queue["local_domains"] is None:
        queue.values["local_domains"] = sorted({"localhost", config.hostname.lower()})
    queue.values["local_domains"] = [d.lower().rstrip(".") for d in queue["local_domains"]]
    for name in queue["policies"]:
        if name not in POLICIES:
            raise queue.error("policies", f"unknown policy {name!r} (one of: {', '.join(POLICIES)})")
    for pattern in queue["forward"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise queue.error("forward", f"{pattern!r} is not a regular expression: {exc}") from None
    if queue["type"] == "disk" and os.path.exists(queue["path"]) and not os.path.isdir(queue["path"]):
        raise queue.error("path", f"{queue['path']!r} is not a directory")
    if queue["type"] == "redis" and not _available("redis"):
        raise queue.error("type", "redis needs the redis package (pip install slimta[redis])")


def _check_relay(relay: Section) -> None:
    kind = relay["type"]
    for key in ("tls_ca_file", "auth_password_file"):
        path = relay.values.get(key)
        if path and not os.access(path, os.R_OK):
            raise relay.error(key, f"file {path!r} is missing or not readable")
    if kind == "static" and relay["auth_user"] and not relay["auth_password_file"]:
        raise relay.error("auth_password_file", "auth_user needs auth_password_file")
    if kind in ("static", "lmtp") and not 1 <= relay["port"] <= 65535:
        raise relay.error("port", f"port {relay['port']} is out of range (1-65535)")
    if kind == "pipe" and not relay["args"]:
        raise relay.error("args", "needs the program to run")
    if kind == "http":
        url = urlsplit(relay["url"])
        if url.scheme not in ("http", "https") or not url.hostname:
            raise relay.error("url", f"{relay['url']!r} is not an http:// or https:// URL")
        if not _available("slimta.relay.http"):
            raise relay.error("type", "http relays are not available yet in this version")


def _local_names(config: Config) -> set[str]:
    names = {"localhost", "localhost.localdomain", "0.0.0.0", "::", "::1", ""}
    names |= {config.hostname.lower(), socket.gethostname().lower()}
    return names


def _is_local(host: str, names: set[str]) -> bool:
    host = host.lower().strip("[]")
    if host in names:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_loops(config: Config, listeners: dict[tuple[str, int], str]) -> None:
    names = _local_names(config) | {host.lower() for host, _ in listeners}
    ports = {port: edge for (_, port), edge in listeners.items()}
    for relay in config.relays:
        target: tuple[str, int] | None = None
        if relay["type"] in ("static", "lmtp"):
            target = (relay["host"], relay["port"])
        elif relay["type"] == "http":
            url = urlsplit(relay["url"])
            target = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
        if target and target[1] in ports and _is_local(target[0], names):
            raise relay.error(
                "host" if relay["type"] != "http" else "url",
                f"delivers to {target[0]}:{target[1]}, this node's own edge {ports[target[1]]!r}: "
                "mail would loop back to itself",
            )
