"""Assembly of a node from its configuration: relays, queues, edges.

.. versionadded:: 0.1.0

:class:`Node` owns everything a running ``slimta`` holds: the listening
sockets (bound once, kept across reloads), the queues (kept across reloads
while their storage is unchanged, so no queued mail moves), the relays and
the edges (rebuilt at each reload on the same sockets), and the open SMTP
sessions (see :class:`Sessions`, which answers ``421 4.3.2`` at shutdown).

Theory of operation of a reload: everything new is built first -- relays,
routers, new queues and the sockets of new listen addresses -- and only
when all of that succeeded are the new edges started on the sockets and
the old edges told to stop *accepting*.  Their sessions finish with the
settings they started with.  Nothing is ever closed and re-bound, so a
client connecting during a reload waits in the listen backlog and is
served by the new edge.

The relay builders (:func:`build_relay`, one relay per ``[[relay]]``
table) live in ``slimta.app._relays`` and are re-exported here; the queue
and edge builders, which the reload machinery shares state with, stay.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pool import Pool

from slimta import logging as slimta_logging
from slimta.app._policy import EdgePolicy, Router, make_http_validators, make_smtp_validators
from slimta.app._relays import build_relay
from slimta.app.config import Config, ConfigError, Section, check_tls_files, parse_address, parse_network
from slimta.app.config import read_credentials as _read_credentials
from slimta.core import SlimtaError
from slimta.edge.smtp import SmtpEdge
from slimta.queue import ExponentialBackoff, Queue
from slimta.smtp import ConnectionLost
from slimta.smtp.reply import Reply
from slimta.smtp.server import Server
from slimta.util import ListenerError, create_listeners

if TYPE_CHECKING:
    from gevent import socket as gsocket

    from slimta.app.metrics import Metrics
    from slimta.queue import QueueStorage
    from slimta.relay import Relay

__all__ = ["SHUTDOWN_REPLY", "Node", "Sessions", "build_relay", "build_storage", "storage_key"]

_log = logging.getLogger("slimta.app")

#: What open sessions are told when the grace period is over.
_SHUTDOWN = Reply("421", "4.3.2 Service shutting down, closing transmission channel")
SHUTDOWN_REPLY = _SHUTDOWN.to_bytes()


class _ShuttingDown(SlimtaError):
    """Thrown into an idle session's greenlet when the grace period is over."""


class _AppServer(Server):
    """A :class:`Server` that knows when (and in which greenlet) it waits for the client."""

    idle = False
    waiter: Any = None

    def _recv(self, conn: Any) -> bytes:
        # The loop flushes every pending reply before it reads, so while the
        # greenlet is blocked here nothing is half-written and the client
        # has its answers: the one safe moment to say 421 and hang up.
        self.idle = True
        self.waiter = gevent.getcurrent()
        try:
            return super()._recv(conn)
        except _ShuttingDown:
            with contextlib.suppress(ConnectionLost):
                self.io.send(SHUTDOWN_REPLY)
            raise ConnectionLost("the server is shutting down") from None
        finally:
            self.idle = False
            self.waiter = None


class Sessions:
    """The open SMTP sessions of every edge, old and new."""

    def __init__(self) -> None:
        self.servers: set[Server] = set()
        self.edges: list[AppSmtpEdge] = []
        self.pools: list[Pool] = []

    def __len__(self) -> int:
        return len(self.servers)

    def close_idle(self) -> int:
        """Say 421 to every session waiting for its client; return how many."""
        count = 0
        for server in list(self.servers):
            waiter = getattr(server, "waiter", None)
            if getattr(server, "idle", False) and waiter is not None and not waiter.dead:
                gevent.kill(waiter, _ShuttingDown())
                count += 1
        for edge in self.edges:
            count += edge.close_parked(_SHUTDOWN)
        return count

    def drain(self, grace: float, hard: float = 10.0) -> None:
        """Let sessions end within ``grace``, then 421 the idle ones.

        Sessions busy storing a message are given up to ``hard`` more
        seconds (the client still gets its 250 or 451), then killed.
        """
        deadline = gevent.get_hub().loop.now() + grace
        while len(self) and gevent.get_hub().loop.now() < deadline:
            gevent.sleep(0.05)
        deadline = gevent.get_hub().loop.now() + hard
        while len(self) and gevent.get_hub().loop.now() < deadline:
            self.close_idle()
            gevent.sleep(0.05)
        for pool in self.pools:
            pool.kill(block=True, timeout=1.0)


class AppSmtpEdge(SmtpEdge):
    """:class:`SmtpEdge` whose sessions are tracked for metrics and a graceful shutdown.

    Everything else (client limits, early-talker checks, parking) is
    :class:`SmtpEdge`'s own: only the session hooks are used here.
    """

    server_class = _AppServer

    def __init__(self, *args: Any, name: str, sessions: Sessions, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = name
        self.sessions = sessions
        self.metrics = metrics
        sessions.edges.append(self)

    def session_started(self, server: Server) -> None:
        """Track the session and count it."""
        self.sessions.servers.add(server)
        self.metrics.session_started(self.name)

    def session_ended(self, server: Server) -> None:
        """Forget the session."""
        self.sessions.servers.discard(server)
        self.metrics.session_ended(self.name)


# -- queues -------------------------------------------------------------------


def storage_key(section: Section) -> tuple[Any, ...]:
    """What identifies a queue's storage: a reload keeps the queue if it is unchanged."""
    kind = section["type"]
    if kind == "disk":
        return (kind, section["path"])
    if kind == "redis":
        return (kind, section["redis_url"], section["redis_prefix"])
    return (kind,)


def build_storage(section: Section) -> QueueStorage:
    """Create the storage of a ``[[queue]]`` table (a disk spool's directories too)."""
    kind = section["type"]
    if kind == "disk":
        from slimta.diskstorage import DiskStorage

        try:
            return DiskStorage(section["path"], section["path"])
        except (OSError, SlimtaError) as exc:
            raise section.error("path", f"cannot use {section['path']!r} as a spool: {exc}") from exc
    if kind == "redis":
        from slimta.redisstorage import RedisStorage

        return RedisStorage(url=section["redis_url"], prefix=section["redis_prefix"])
    from slimta.queue.dict import DictStorage

    return DictStorage()


def _build_router(section: Section, relays: dict[str, Relay], metrics: Metrics) -> Router:
    local, remote = section["local_relay"], section["relay"]
    return Router(
        frozenset(section["local_domains"]),
        relays.get(local) if local else None,
        relays.get(remote) if remote else None,
        metrics,
        (local or "none", remote or "none"),
    )


def _policies(section: Section, config: Config) -> list[Any]:
    from slimta.policy.forward import Forward
    from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader
    from slimta.policy.split import RecipientDomainSplit, RecipientSplit

    policies: list[Any] = []
    if section["forward"]:
        forward = Forward()
        for pattern, repl in section["forward"].items():
            forward.add_mapping(pattern, repl)
        policies.append(forward)
    makers = {
        "add_date_header": AddDateHeader,
        "add_message_id_header": lambda: AddMessageIdHeader(config.hostname),
        "add_received_header": AddReceivedHeader,
        "recipient_split": RecipientSplit,
        "recipient_domain_split": RecipientDomainSplit,
    }
    policies.extend(makers[name]() for name in section["policies"])
    return policies


def _configure_queue(queue: Queue, section: Section, router: Router, config: Config) -> None:
    queue.relay = router
    queue.backoff = ExponentialBackoff(
        section["retry_initial"], section["retry_max"], section["retry_factor"], section["lifetime"]
    )
    queue.relay_timeout = section["relay_timeout"] or None
    queue.queue_policies = _policies(section, config)
    # A Maildir delivery is durable and quick: the mailbox file can stand in
    # for the queue file (the 250 waits for it).  Other local relays run a
    # program, too slow to hold the SMTP session for.
    from slimta.relay.maildir import MaildirRelay

    direct = section["direct_local"] and isinstance(router.local, MaildirRelay)
    queue.direct = router.all_local if direct else None


def _new_queue(section: Section, router: Router, config: Config) -> Queue:
    queue = Queue(build_storage(section), router, relay_pool=section["relay_pool"] or None)
    _configure_queue(queue, section, router, config)
    return queue


# -- the node -------------------------------------------------------------------


class Node:
    """Everything one running ``slimta`` holds.

    Args:
        config: The checked configuration.
        metrics: The node's counters.
    """

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.sessions = Sessions()
        self.sockets: dict[str, list[gsocket.socket]] = {}
        self.queues: dict[str, Queue] = {}
        self.relays: dict[str, Relay] = {}
        self.edges: list[Any] = []

    # -- building ---------------------------------------------------------------

    def _build_relays(self, config: Config) -> dict[str, Relay]:
        return {section.name: build_relay(section, config) for section in config.relays}

    def prepare(self) -> None:
        """Build relays and queues (directories created, nothing bound)."""
        self.relays = self._build_relays(self.config)
        for section in self.config.queues:
            router = _build_router(section, self.relays, self.metrics)
            self.queues[section.name] = _new_queue(section, router, self.config)
        self.metrics.queues = dict(self.queues)

    def bind(self, config: Config | None = None) -> list[str]:
        """Bind the listen addresses not bound yet; return them.

        Raises:
            ListenerError: An address could not be bound; the message says
                whether it is already in use.  Sockets bound by this call are
                closed again.
        """
        config = config or self.config
        new: list[str] = []
        try:
            for edge in config.edges:
                for text in edge["listen"]:
                    if text in self.sockets:
                        continue
                    self.sockets[text] = _bind(edge, text)
                    new.append(text)
        except ListenerError:
            for text in new:
                for sock in self.sockets.pop(text):
                    sock.close()
            raise
        return new

    def _make_edges(self, config: Config) -> list[Any]:
        edges: list[Any] = []
        for section in config.edges:
            queue = self.queues[section["queue"]]
            policy = self._edge_policy(section, config)
            pool = Pool(section["max_sessions"] or None)
            self.sessions.pools.append(pool)
            socks = [sock for text in section["listen"] for sock in self.sockets[text]]
            edges.extend(self._make_edge(section, config, sock, queue, policy, pool) for sock in socks)
        return edges

    def _edge_policy(self, section: Section, config: Config) -> EdgePolicy:
        queue = config.queue(section["queue"])
        policy = EdgePolicy(
            section.name,
            self.metrics,
            frozenset(queue["local_domains"]),
            bool(queue["local_relay"]),
            bool(queue["relay"]),
        )
        policy.relay_networks = [
            parse_network(section, "relay_networks", n) for n in section.values.get("relay_networks", [])
        ]
        policy.sender_deny = list(section.values.get("sender_deny", []))
        policy.recipient_deny = list(section.values.get("recipient_deny", []))
        if section.values.get("credentials"):
            policy.credentials = _read_credentials(section["credentials"])
        policy.require_auth = bool(section.values.get("require_auth"))
        return policy

    def _make_edge(
        self, section: Section, config: Config, sock: Any, queue: Queue, policy: EdgePolicy, pool: Pool
    ) -> Any:
        context = check_tls_files(section)
        hostname = section["hostname"] or config.hostname
        if section["type"] == "http":
            from slimta.edge.wsgi import WsgiEdge

            return WsgiEdge(
                queue,
                hostname,
                make_http_validators(policy),
                section["uri_pattern"] or None,
                listener=sock,
                pool=pool,
                context=context,
                max_size=section["max_size"] or None,
            )
        return AppSmtpEdge(
            sock,
            queue,
            pool=pool,
            max_size=section["max_size"] or None,
            validator_class=make_smtp_validators(policy),
            auth=["PLAIN", "LOGIN"] if section["auth"] else False,
            context=context,
            tls_immediately=section["implicit_tls"],
            command_timeout=section["command_timeout"] or None,
            data_timeout=section["data_timeout"] or None,
            hostname=hostname,
            name=section.name,
            sessions=self.sessions,
            metrics=self.metrics,
        )

    # -- running ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the queues and accept connections."""
        for queue in self.queues.values():
            queue.start()
        self.edges = self._make_edges(self.config)
        for edge in self.edges:
            edge.server.start()
        for section in self.config.edges:
            slimta_logging.logline(_log.info, "edge", section.name, "listen", address=section["listen"])

    def reload(self, config: Config) -> None:
        """Switch to ``config`` without closing a listening socket or moving queued mail.

        Raises:
            ConfigError: ``config`` changes something only a restart can
                (a queue's storage, or removes a queue).
            SlimtaError: Building the new parts failed; nothing changed.
        """
        for section in self.config.queues:
            try:
                new = config.queue(section.name)
            except StopIteration:
                raise ConfigError(
                    f"queue {section.name!r} was removed: that needs a restart", config.source
                ) from None
            if storage_key(new) != storage_key(section):
                raise new.error("type", "changing a queue's storage needs a restart")
        relays = self._build_relays(config)
        queues: dict[str, Queue] = {}
        for section in config.queues:
            router = _build_router(section, relays, self.metrics)
            old = self.queues.get(section.name)
            if old is not None:
                _configure_queue(old, section, router, config)
                queues[section.name] = old
            else:
                queues[section.name] = _new_queue(section, router, config)
        bound = self.bind(config)
        old_edges, old_relays = self.edges, self.relays
        self.config, self.queues, self.relays = config, queues, relays
        self.metrics.queues = dict(queues)
        for queue in queues.values():
            if not queue.started:
                queue.start()
        self.edges = self._make_edges(config)
        for edge in self.edges:
            edge.server.start()
        for edge in old_edges:
            _stop_accepting(edge)
        self._close_unused_sockets(config)
        self.sessions.pools = [
            p for p in self.sessions.pools if len(p) or any(e.server.pool is p for e in self.edges)
        ]
        # Old edges only matter while they still have parked sessions.
        self.sessions.edges = [e for e in self.sessions.edges if e in self.edges or e._parked]
        # Attempts in flight may still use the old relays; let them finish.
        gevent.spawn_later(600, _kill_relays, list(old_relays.values()))
        slimta_logging.logline(
            _log.info, "config", os.getpid(), "reload", source=config.source, new_listeners=bound
        )

    def _close_unused_sockets(self, config: Config) -> None:
        wanted = {text for edge in config.edges for text in edge["listen"]}
        for text in list(self.sockets):
            if text not in wanted:
                for sock in self.sockets.pop(text):
                    sock.close()

    def stop_accepting(self) -> None:
        """Stop accepting connections (sessions already open go on)."""
        for edge in self.edges:
            _stop_accepting(edge)
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets.clear()

    def shutdown(self, grace: float) -> None:
        """Stop accepting, drain the sessions, stop the queues and relays."""
        self.stop_accepting()
        self.sessions.drain(grace)
        for queue in self.queues.values():
            queue.kill(block=True, timeout=5.0)
        _kill_relays(list(self.relays.values()))


def _bind(edge: Section, text: str) -> list[gsocket.socket]:
    host, port = parse_address(text)
    try:
        return create_listeners((host, port))
    except ListenerError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenerError(
                exc.errno, f"edge {edge.name!r}: {text} is already in use (another server listens there)"
            ) from exc
        if exc.errno == errno.EACCES:
            raise ListenerError(
                exc.errno, f"edge {edge.name!r}: not allowed to listen on {text} (ports below 1024 need root)"
            ) from exc
        raise ListenerError(exc.errno, f"edge {edge.name!r}: cannot listen on {text}: {exc}") from exc


def _stop_accepting(edge: Any) -> None:
    # Not server.close(): that would close the shared listening socket.
    server = edge.server
    server._stop_event.set()
    server.stop_accepting()


def _kill_relays(relays: list[Relay]) -> None:
    for relay in relays:
        try:
            relay.kill()
        except Exception:  # noqa: BLE001 - stopping one relay must not stop the others
            slimta_logging.log_exception(__name__)
