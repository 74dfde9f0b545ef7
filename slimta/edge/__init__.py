"""Edges: where messages enter the MTA.

An :class:`Edge` turns what a client sends into an
:class:`~slimta.envelope.Envelope` and hands it to the queue with
:meth:`Edge.handoff`, which returns only once the queue has stored it (or
refused it).  :class:`EdgeServer` adds a gevent ``StreamServer`` for edges
that listen on a socket; it is a :class:`gevent.Greenlet`, so a script calls
``edge.start()`` and may ``edge.get()`` to wait on it.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer

from slimta.util import LISTEN_BACKLOG

__all__ = ["Edge", "EdgeServer"]


class Edge:
    """Base class of every edge.

    Args:
        queue: the queue (anything with ``enqueue(envelope)``) that stores
            received envelopes.
        hostname: this MTA's name, recorded as ``envelope.receiver``; defaults
            to the machine's fully qualified name.
    """

    def __init__(self, queue: Any, hostname: str | None = None) -> None:
        self.queue = queue
        self.hostname = hostname or _stdlib_socket.getfqdn()

    def handoff(self, envelope: Any) -> list[tuple[Any, Any]]:
        """Give ``envelope`` to the queue; returns ``queue.enqueue``'s results.

        Each result pairs an envelope with its queue id, or with the
        :class:`~slimta.queue.QueueError` (or relay error, for a proxy queue)
        that refused it.
        """
        envelope.receiver = self.hostname
        results: list[tuple[Any, Any]] = self.queue.enqueue(envelope)
        return results

    def kill(self) -> None:
        """Stop the edge.  The base class holds nothing to stop."""


class EdgeServer(Edge, gevent.Greenlet):  # type: ignore[type-arg]
    """An edge that accepts connections with a gevent ``StreamServer``.

    The listening socket is bound in the constructor, so a port of ``0``
    can be read back from :attr:`server` (``edge.server.address``) before
    :meth:`start`.  Connections are queued in a listen backlog of
    :data:`slimta.util.LISTEN_BACKLOG` (gevent's default of 128 drops part
    of a burst of 1,000 connects).

    Args:
        listener: ``(ip, port)`` to listen on, or a bound, listening socket.
        queue: see :class:`Edge`.
        pool: optional :class:`gevent.pool.Pool` bounding concurrent
            sessions.
        hostname: see :class:`Edge`.
    """

    def __init__(
        self, listener: Any, queue: Any, pool: Pool | None = None, hostname: str | None = None
    ) -> None:
        Edge.__init__(self, queue, hostname)
        gevent.Greenlet.__init__(self)
        # Fix: an empty Pool has len() 0 and is falsy, so "pool or ..." fell
        # back to an unbounded spawn and ignored the user's pool.
        spawn: Any = pool if pool is not None else "default"
        kwargs: dict[str, Any] = {"spawn": spawn}
        if isinstance(listener, tuple):
            kwargs["backlog"] = LISTEN_BACKLOG
        self._pool = pool
        server = _Listener(listener, self._handle, **kwargs)
        server.edge = self
        self.server: StreamServer = server
        self.server.init_socket()

    def _handle(self, socket: Any, address: Any) -> None:
        try:
            self.handle(socket, address)
        finally:
            socket.close()

    def _take_over(self, socket: Any, address: Any) -> bool:
        """Called from the event loop for each accepted connection.

        Return True to take the connection over (the edge then spawns and
        closes it itself); the default lets the ``StreamServer`` spawn
        :meth:`handle` in the pool, as in 4.0.
        """
        return False

    def handle(self, socket: Any, address: Any) -> None:
        """Serve one connection; subclasses implement the protocol."""
        raise NotImplementedError

    def _run(self) -> None:
        self.server.start()
        self.server.serve_forever()

    def kill(self, *args: Any, **kwargs: Any) -> None:
        """Stop accepting connections and stop the greenlet."""
        self.server.stop()
        gevent.Greenlet.kill(self, *args, **kwargs)


class _Listener(StreamServer):
    """A ``StreamServer`` that offers each accepted connection to its edge first."""

    edge: EdgeServer | None = None

    def do_handle(self, *args: Any) -> None:
        edge = self.edge
        if edge is not None and edge._take_over(*args):
            return
        super().do_handle(*args)
