"""A bounded pool of long-lived delivery clients, shared by the SMTP relays.

Opening a connection per message is wasteful when many messages go to the
same next hop.  :class:`RelayPool` keeps up to ``pool_size`` client greenlets
(:class:`RelayPoolClient` subclasses, made by :meth:`RelayPool.add_client`)
and a shared request queue.  :meth:`RelayPool.attempt` puts a
``(result, envelope)`` request on that queue and waits on ``result``, a
:class:`gevent.event.AsyncResult`; an idle client takes the request with
:meth:`RelayPoolClient.poll`, delivers the envelope and fills in ``result``
with the delivery outcome (or with a :class:`~slimta.relay.RelayError`
through ``set_exception``).  A client that has no more work within its
``idle_timeout`` simply ends, closing its connection.

Two safety nets go beyond python-slimta: a client that dies while holding a
request fails that request with a :class:`~slimta.relay.TransientRelayError`
instead of leaving the caller waiting for ever, and a caller interrupted
while its request is still queued (by the queue's attempt timeout, say)
withdraws the request so it is not delivered behind the caller's back.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from gevent import Greenlet, Timeout
from gevent.event import AsyncResult

from slimta.relay import Relay, TransientRelayError
from slimta.util.deque import BlockingDeque

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["RelayPool", "RelayPoolClient"]

if TYPE_CHECKING:
    #: A delivery request: the result to fill in and the envelope to deliver.
    _Request = tuple[AsyncResult[Any], Envelope]


class RelayPool(Relay):
    """A :class:`~slimta.relay.Relay` that hands deliveries to pooled clients.

    Subclasses implement :meth:`add_client`.

    Args:
        pool_size: The most clients (typically connections to one
            destination) alive at once; ``None`` means no limit.  When every
            client is busy and the limit is reached, attempts wait in
            :attr:`queue` for the next free client.

    Attributes:
        pool: The set of live clients.
        pool_size: The limit given above.
        queue: The :class:`~slimta.util.deque.BlockingDeque` of pending
            ``(result, envelope)`` requests that idle clients poll.
    """

    def __init__(self, pool_size: int | None = None) -> None:
        super().__init__()
        self.pool: set[RelayPoolClient] = set()
        self.pool_size = pool_size
        self.queue: BlockingDeque[_Request] = BlockingDeque()

    def kill(self) -> None:
        """Kill every client in the pool."""
        for client in list(self.pool):
            client.kill()

    def _remove_client(self, client: RelayPoolClient) -> None:
        self.pool.discard(client)
        pending = client._current_result
        if pending is not None and not pending.ready():
            # The client ended in the middle of a delivery (a bug, or it was
            # killed): answer the caller rather than leaving it blocked.
            pending.set_exception(TransientRelayError("Relay client ended during delivery"))
        # Requests may still be queued with nobody left to serve them.
        if len(self.queue) > self._idle_count() and self._has_room():
            self._add_client()

    def _add_client(self) -> None:
        client = self.add_client()
        client.queue = self.queue
        client.link(self._remove_client)
        self.pool.add(client)
        client.start()

    def _idle_count(self) -> int:
        return sum(1 for client in self.pool if client.idle)

    def _has_room(self) -> bool:
        return not self.pool_size or len(self.pool) < self.pool_size

    def _check_idle(self) -> None:
        # One new client for each request that no idle client is going to take.
        if len(self.queue) >= self._idle_count() and self._has_room():
            self._add_client()

    def add_client(self) -> RelayPoolClient:
        """Create a new, not yet started client; subclasses must override this.

        Returns:
            A :class:`RelayPoolClient`; the pool sets its ``queue``, starts it
            and forgets it when it ends.
        """
        raise NotImplementedError()

    def attempt(self, envelope: Envelope, attempts: int) -> Any:
        """Queue ``envelope`` for the next idle client and wait for the outcome.

        Args:
            envelope: The envelope to deliver.
            attempts: How many earlier attempts the envelope has had.

        Returns:
            Whatever the client set on the request's result.

        Raises:
            RelayError: The client reported a failure.
        """
        result: AsyncResult[Any] = AsyncResult()
        request: _Request = (result, envelope)
        self._check_idle()
        self.queue.append(request)
        try:
            return result.get()
        except BaseException:
            # Interrupted (a Timeout, a kill) or failed: make sure a request
            # nobody waits for any more is not delivered later.
            with contextlib.suppress(ValueError):
                self.queue.remove(request)
            raise


if TYPE_CHECKING:
    _ClientBase = Greenlet[[], None]
else:
    _ClientBase = Greenlet


class RelayPoolClient(_ClientBase):
    """A pooled client greenlet that serves delivery requests.

    Subclasses override :meth:`_run`: call :meth:`poll` for each request,
    deliver the envelope, then ``result.set(outcome)`` or
    ``result.set_exception(relay_error)``; return when :meth:`poll` gives
    ``(None, None)``.

    Args:
        queue: The request queue to poll (the pool replaces it with its own).
        idle_timeout: How long, in seconds, :meth:`poll` waits for the next
            request before giving up; ``None`` waits for ever.

    Attributes:
        idle: True while the client is waiting in :meth:`poll`.
        queue: The request queue.
        idle_timeout: The timeout given above.
    """

    def __init__(self, queue: BlockingDeque[_Request], idle_timeout: float | None = None) -> None:
        super().__init__()
        self.idle = False
        self.queue = queue
        self.idle_timeout = idle_timeout
        self._current_result: AsyncResult[Any] | None = None

    def poll(self) -> tuple[AsyncResult[Any], Envelope] | tuple[None, None]:
        """Wait for the next delivery request.

        Returns:
            ``(result, envelope)``, or ``(None, None)`` when no request came
            within :attr:`idle_timeout`.
        """
        self.idle = True
        timer = Timeout(self.idle_timeout)
        timer.start()
        try:
            request = self.queue.popleft()
        except Timeout as exc:
            if exc is not timer:
                raise
            return None, None
        finally:
            timer.cancel()
            self.idle = False
        self._current_result = request[0]
        return request

    def _run(self) -> None:
        """Serve requests until idle; subclasses must override this."""
        raise NotImplementedError()
