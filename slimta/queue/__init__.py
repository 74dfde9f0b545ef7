"""The queue: store every accepted message, deliver it, retry it, bounce it.

RFC 5321 makes a server that answered ``250`` to a message responsible for
it.  :class:`Queue` takes that responsibility: :meth:`Queue.enqueue` writes
each envelope to a :class:`QueueStorage` backend *before* it returns (the
edge answers the client only then), and the queue greenlet delivers stored
envelopes through a :class:`~slimta.relay.Relay`, retries temporary failures
on a back-off schedule kept in storage, and bounces permanent failures to
the sender.

Theory of operation:

* **Ownership.**  An envelope id is in exactly one place in memory: the
  timetable (waiting for its next attempt) or the active set (an attempt is
  in flight).  Only the greenlet that moved it into the active set may move
  it out, so however many enqueues, flushes, loads and retries race, each
  stored envelope has at most one attempt in flight per process.
* **Workers.**  Ids ready for an attempt (new, or due from the timetable)
  go on a ready list served by worker greenlets, at most ``relay_pool`` of
  them.  One spare worker is kept while work waits, so a relay that blocks
  gets concurrency and a relay that never blocks costs no greenlet per
  message.  Neither :meth:`Queue.enqueue` nor the scheduler ever waits for
  a free worker.
* **Recipients.**  A relay may report each recipient separately.  Delivered
  recipients are recorded with :meth:`QueueStorage.set_recipients_delivered`
  and are not attempted again; permanently failed ones are bounced (one
  bounce per distinct reply); the rest are retried.
* **Order of writes.**  A bounce is stored before the original is removed
  or updated, so a crash in between can duplicate a bounce but never lose
  one.  If storing the bounce fails, the failed recipients stay queued.
* **Faults.**  A relay that raises something unexpected, returns garbage,
  or hangs past :attr:`Queue.relay_timeout` is a temporary failure; a
  storage error after an attempt puts the id back in the timetable after
  :attr:`Queue.store_retry_delay`.  The scheduler loop logs and carries on
  after any error; it ends only when killed.
* **Direct delivery.**  With :attr:`Queue.direct` set, an envelope it
  accepts is attempted inside :meth:`Queue.enqueue`, before anything is
  stored; only the recipients left undelivered are written (and then
  retried or bounced as usual).  For a relay whose delivery is durable by
  itself (a Maildir file fsync'd with its directory) the client's ``250``
  still means "on disk", one write cheaper.
* **Restarts.**  Retry times live in storage: :meth:`Queue.start` loads
  every stored envelope and resumes its schedule.

What lives where: this module holds the storage interface and the
:class:`Queue` itself (enqueue, the scheduler, every read of the clock);
:class:`Queue` inherits the workers, the delivery attempts (direct ones
too) and the recording of their outcome from ``_delivery.py``, and
inspection from ``_inspect.py``.
"""

from __future__ import annotations

import logging
import time as time  # re-exported: _delivery reads slimta.queue.time (QueueClock)
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent import Greenlet, GreenletExit
from gevent.event import Event
from gevent.pool import Group, Pool

from slimta import logging as slimta_logging
from slimta.core import SlimtaError
from slimta.queue._backoff import ExponentialBackoff
from slimta.queue._inspect import InspectionMixin, QueueEntry
from slimta.queue._schedule import Schedule
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.relay import Relay

__all__ = ["ExponentialBackoff", "Queue", "QueueEntry", "QueueError", "QueueStorage"]

_log = logging.getLogger(__name__)

#: ``backoff(envelope, attempts) -> seconds until the next attempt, or None``.
Backoff = Callable[["Envelope", int], "float | None"]
#: ``bounce_factory(envelope, reply) -> bounce envelope, or None``.
BounceFactory = Callable[["Envelope", Reply], "Envelope | None"]


class QueueError(SlimtaError):
    """Queuing a message failed (typically: the storage backend refused it).

    Args:
        msg: What went wrong.
        reply: The SMTP reply an edge should send for this failure, if the
            default (``451 4.3.0``) is not right.

    Attributes:
        reply: The :class:`~slimta.smtp.reply.Reply` given, or ``None``.
    """

    def __init__(self, msg: str | None = None, reply: Reply | None = None) -> None:
        super().__init__(*(() if msg is None else (msg,)))
        self.reply = reply


class QueueStorage:
    """The interface a storage backend implements for :class:`Queue`.

    Subclass it and implement the methods that raise
    :class:`NotImplementedError`.  Ids are strings chosen by the backend.
    Methods may raise :class:`QueueError` (or any other error, which the
    queue treats the same way).  :meth:`wait`, :meth:`get_info`,
    :meth:`set_last_error` and :meth:`inspect` have working defaults.

    :class:`slimta.testing.storage.StorageConformance` is the test suite
    every backend must pass; run it against your own backend too.
    """

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store a new envelope, with zero attempts so far.

        Args:
            envelope: The envelope to store.
            timestamp: When its first delivery attempt is due.

        Returns:
            The new, unique id.  When this returns, the envelope must be as
            safe as the backend can make it: the client is told so next.
        """
        raise NotImplementedError()

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - 4.0 argument name
        """Change when the next delivery attempt for ``id`` is due."""
        raise NotImplementedError()

    def increment_attempts(self, id: str) -> int:  # noqa: A002 - 4.0 argument name
        """Add one to the attempt count of ``id``.

        Returns:
            The new count.
        """
        raise NotImplementedError()

    def set_recipients_delivered(self, id: str, rcpt_indexes: Iterable[int]) -> None:  # noqa: A002 - 4.0 argument name
        """Record that some recipients need no further attempts.

        Args:
            id: The envelope's id.
            rcpt_indexes: Indexes into the recipient list that :meth:`get`
                returns now; those recipients must be left out of what
                :meth:`get` returns from then on.
        """
        raise NotImplementedError()

    def load(self) -> Iterable[tuple[float, str]]:
        """List everything stored, for the queue to schedule on start.

        Returns:
            ``(timestamp, id)`` pairs, the timestamp being the next attempt.
        """
        raise NotImplementedError()

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - 4.0 argument name
        """Return ``(envelope, attempts)`` for ``id``.

        Raises:
            KeyError: Nothing is stored under ``id``.
        """
        raise NotImplementedError()

    def remove(self, id: str) -> None:  # noqa: A002 - 4.0 argument name
        """Delete ``id`` (delivered or bounced); an unknown id is ignored."""
        raise NotImplementedError()

    def wait(self) -> Iterable[tuple[float, str]] | None:
        """Wait for envelopes stored by *other* processes (shared backends).

        The queue calls this in a loop and schedules every ``(timestamp,
        id)`` pair it yields.  A backend that is not shared returns
        ``None`` (the default), and the queue stops calling it.
        """
        return None

    def get_info(self) -> dict[str, Any]:
        """Return facts about the storage; the key ``size`` is always there.

        The default counts what :meth:`load` lists.
        """
        return {"size": sum(1 for _ in self.load())}

    def set_last_error(self, id: str, error: str) -> None:  # noqa: A002 - matches the other methods
        """Remember why the last attempt for ``id`` failed (for inspection).

        The default keeps nothing.

        .. versionadded:: 0.1.0 (not in python-slimta).
        """

    def inspect(self) -> Iterator[QueueEntry]:
        """List every stored envelope with its queue metadata.

        The default is built on :meth:`load` and :meth:`get`; backends may
        do it more cheaply.

        .. versionadded:: 0.1.0 (not in python-slimta).
        """
        for timestamp, id_ in list(self.load()):
            try:
                envelope, attempts = self.get(id_)
            except KeyError:
                continue  # removed while we were listing
            state = "deferred" if attempts else "queued"
            yield QueueEntry(
                id_, envelope.sender, tuple(envelope.recipients), attempts, timestamp, None, state
            )


# Imported here, not at the top: _delivery needs QueueError and QueueStorage
# at run time, so they must exist before it is loaded.
from slimta.queue._delivery import DeliveryMixin, _default_bounce  # noqa: E402


def _as_pool(pool: int | Pool | None) -> Pool | None:
    if pool is None or isinstance(pool, Pool):
        return pool
    return Pool(pool)


_STORE_FAILED = Reply("451", "4.3.0 Error queuing message, try again later")

if TYPE_CHECKING:
    _GreenletBase = Greenlet[[], None]
else:
    _GreenletBase = Greenlet  # gevent's Greenlet is generic only in its stubs


class Queue(InspectionMixin, DeliveryMixin, _GreenletBase):
    """Store envelopes, deliver them through a relay, retry and bounce.

    The queue is a :class:`gevent.Greenlet`: call :meth:`start` to run the
    scheduler (it loads what is already in storage), :meth:`kill` to stop it.

    Args:
        store: The :class:`QueueStorage` backend.
        relay: The :class:`~slimta.relay.Relay` to deliver with; without one
            messages are only stored.
        backoff: ``backoff(envelope, attempts)`` returns the seconds until
            the next attempt after ``attempts`` failures, or ``None`` to give
            up and bounce.  Defaults to :class:`ExponentialBackoff` (this
            differs from python-slimta, which never retries by default).
        bounce_factory: ``bounce_factory(envelope, reply)`` returns the
            bounce envelope to send, or ``None`` for none.  Defaults to
            :class:`slimta.bounce.Bounce`.
        bounce_queue: Where bounces are enqueued; defaults to this queue.
        store_pool: The most storage calls at once (an int or a
            :class:`gevent.pool.Pool`); default unlimited.
        relay_pool: The most delivery attempts at once (an int or a
            :class:`~gevent.pool.Pool`); default unlimited.
        relay_timeout: Seconds after which a delivery attempt is abandoned
            and counted as a temporary failure; ``None`` for no limit.
            (Beyond python-slimta.)

    Attributes:
        store_retry_delay: Seconds before an envelope is tried again after
            the storage failed while recording an attempt's outcome.
        direct: ``direct(envelope) -> bool``, or ``None`` (the default).
            For an envelope it accepts, :meth:`enqueue` makes the first
            delivery attempt *before* storing it, and stores only the
            recipients that attempt did not deliver; an envelope delivered
            to every recipient is never written to storage.  Meant for a
            fast local relay whose delivery is itself durable (a Maildir
            file is fsync'd before it counts as delivered): the client's
            ``250`` then waits for the mailbox instead of the queue file,
            and one durable write per message is saved.  A crash after the
            delivery but before the ``250`` means a duplicate when the
            client sends again, never a loss.  These attempts run in the
            caller's greenlet and do not count against ``relay_pool``.
            (Beyond python-slimta.)
        direct_timeout: Seconds that attempt may take (default 30); past
            that the envelope is stored and delivered the usual way (if the
            late attempt still finishes, that recipient gets a duplicate).
    """

    store_retry_delay: float = 60.0
    direct: Callable[[Envelope], bool] | None = None
    direct_timeout: float = 30.0

    def __init__(
        self,
        store: QueueStorage,
        relay: Relay | None = None,
        backoff: Backoff | None = None,
        bounce_factory: BounceFactory | None = None,
        bounce_queue: Any = None,
        store_pool: int | Pool | None = None,
        relay_pool: int | Pool | None = None,
        relay_timeout: float | None = 600.0,
    ) -> None:
        super().__init__()
        self.store = store
        self.relay = relay
        self.backoff: Backoff = backoff if backoff is not None else ExponentialBackoff()
        self.bounce_factory: BounceFactory = bounce_factory if bounce_factory is not None else _default_bounce
        # Not "bounce_queue or self": a greenlet that has not started is false.
        self.bounce_queue: Any = bounce_queue if bounce_queue is not None else self
        self.store_pool = _as_pool(store_pool)
        self.relay_pool = _as_pool(relay_pool)
        self.relay_timeout = relay_timeout
        self.queue_policies: list[Any] = []
        # Delivery workers take (id, envelope or None, attempts) from _ready.
        self._workers: Group = self.relay_pool if self.relay_pool is not None else Group()
        self._ready: deque[tuple[str, Envelope | None, int]] = deque()
        self._spare: Greenlet[..., Any] | None = None  # spawned, no work taken yet
        self._schedule = Schedule()
        self._active: set[str] = set()
        self._cancelled: set[str] = set()
        self._last_errors: dict[str, str] = {}
        self._wake = Event()
        self._helpers: list[Greenlet[..., Any]] = []

    # -- policies and enqueue ------------------------------------------------

    def add_policy(self, policy: Any) -> None:
        """Add a queue policy, run on every envelope before it is stored.

        Args:
            policy: A :class:`slimta.policy.QueuePolicy` (any object with an
                ``apply(envelope)`` method).  ``apply`` may change the
                envelope, or return a list of envelopes to store instead.

        Raises:
            TypeError: ``policy`` has no ``apply`` method.
        """
        if not callable(getattr(policy, "apply", None)):
            raise TypeError("Argument not a QueuePolicy.")
        self.queue_policies.append(policy)

    def _run_policies(self, envelope: Envelope) -> list[Envelope]:
        current = [envelope]
        for policy in self.queue_policies:
            replaced: list[Envelope] = []
            for env in current:
                result = policy.apply(env)
                if result:
                    replaced.extend(result)
                else:
                    replaced.append(env)
            current = replaced
        return current

    def _store_call(self, func: Callable[..., Any], *args: Any) -> Any:
        if self.store_pool is None:
            return func(*args)
        return self.store_pool.spawn(func, *args).get()

    def _write(self, envelope: Envelope, now: float) -> str | QueueError:
        if getattr(envelope, "timestamp", None) is None:
            envelope.timestamp = now  # the default back-off measures age from it
        try:
            id_: str = self._store_call(self.store.write, envelope, now)
        except QueueError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - any storage failure must become a QueueError
            slimta_logging.log_exception(__name__)
            return QueueError(f"Storage write failed: {exc}", _STORE_FAILED)
        return id_

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str | QueueError]]:
        """Run the queue policies, store the result and start delivery.

        Each resulting envelope is stored before this returns; its first
        delivery attempt starts at once (or as soon as ``relay_pool`` has
        room) without waiting for it.  With :attr:`direct`, an envelope it
        accepts is attempted first, here, and only what that attempt did
        not deliver is stored.

        Args:
            envelope: The envelope received.

        Returns:
            One ``(envelope, id)`` pair per envelope stored, with a
            :class:`QueueError` in place of the id when storing it failed
            (nothing is delivered for that one).
        """
        now = time.time()
        envelopes = self._run_policies(envelope)
        if self.relay is not None and self.direct is not None:
            return [self._enqueue_direct(env, now) for env in envelopes]
        if self.store_pool is not None and len(envelopes) > 1:
            writers = [self.store_pool.spawn(self._write, env, now) for env in envelopes]
            gevent.joinall(writers)
            ids = [writer.get() for writer in writers]
        else:
            ids = [self._write(env, now) for env in envelopes]
        if self.relay is not None:
            for env, id_ in zip(envelopes, ids, strict=True):
                if not isinstance(id_, QueueError):
                    self._start_new(id_, env)
        return list(zip(envelopes, ids, strict=True))

    # -- the scheduler greenlet ----------------------------------------------

    def _add_queued(self, when: float, id_: str) -> None:
        if id_ in self._active:
            return  # the attempt in flight reschedules it when it finishes
        self._schedule.add(id_, when)
        self._wake.set()

    def _load_all(self) -> None:
        while True:
            try:
                entries = list(self._store_call(self.store.load))
            except Exception:  # noqa: BLE001 - retry until storage is readable
                slimta_logging.log_exception(__name__)
                gevent.sleep(self.store_retry_delay)
                continue
            for when, id_ in entries:
                self._add_queued(when, id_)
            return

    def _wait_store(self) -> None:
        while True:
            pause = 0.1  # a wait() that returns nothing at once is polled gently
            try:
                entries = self.store.wait()
                if entries is None:
                    return
                for when, id_ in entries:
                    self._add_queued(when, id_)
                    pause = 0.0
            except NotImplementedError:
                return  # a 4.0-style backend without wait()
            except Exception:  # noqa: BLE001 - keep listening after a storage fault
                slimta_logging.log_exception(__name__)
                pause = self.store_retry_delay
            gevent.sleep(pause)

    def _dispatch_due(self) -> None:
        now = time.time()
        while (id_ := self._schedule.pop_due(now)) is not None:
            if id_ in self._active:
                continue  # already being attempted; it reschedules itself
            self._active.add(id_)
            self._hand_over(id_, None, 0)

    def _run(self) -> None:
        if self.relay is None:
            return
        self._helpers = [gevent.spawn(self._load_all), gevent.spawn(self._wait_store)]
        while True:
            try:
                self._wake.clear()
                self._dispatch_due()
                first = self._schedule.next_time()
                self._wake.wait(None if first is None else max(0.0, first - time.time()))
            except Exception:  # noqa: BLE001 - the scheduler must never die
                slimta_logging.log_exception(__name__)
                gevent.sleep(0.1)

    def flush(self) -> None:
        """Make every waiting envelope due now, ignoring its retry time."""
        self._schedule.flush(time.time())
        self._wake.set()

    def kill(
        self,
        exception: type[BaseException] | BaseException = GreenletExit,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Stop the scheduler.

        Attempts already in flight run to the end (at most
        :attr:`relay_timeout`) and record their outcome in storage.

        Args:
            exception: As for :meth:`gevent.Greenlet.kill`.
            block: Wait for the scheduler to end.
            timeout: The longest wait when ``block`` is true.
        """
        for helper in self._helpers:
            helper.kill(block=False)
        super().kill(exception, block, timeout)
