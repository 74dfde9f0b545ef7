"""Delivery attempts for :class:`~slimta.queue.Queue`: workers, outcomes, bounces.

:class:`DeliveryMixin` holds what happens to an envelope id once the queue
owns it (see "Theory of operation" in :mod:`slimta.queue`):

* **Ownership and workers.**  An id enters the active set, goes on the
  ready list and is taken by a worker greenlet (one spare kept while work
  waits), which reads it from storage if need be and attempts it; when the
  attempt ends the id leaves the active set for the timetable or for good.
* **Direct delivery.**  With :attr:`Queue.direct <slimta.queue.Queue.direct>`,
  the first attempt runs inside :meth:`~slimta.queue.Queue.enqueue`, before
  anything is stored.
* **One attempt's outcome.**  Calling the relay under
  :attr:`~slimta.queue.Queue.relay_timeout`, asking the back-off when to
  retry, bouncing permanent failures (one bounce per distinct reply), and
  recording all of it in storage, bounces first.

:class:`~slimta.queue.Queue` inherits these methods, so no call pays for
the split.  The time is read as ``slimta.queue``'s ``time`` attribute, at
each use: that is what :class:`~slimta.testing.clock.QueueClock` replaces
(the scheduler, which also sleeps, stays in :mod:`slimta.queue`).  Log
lines keep the ``slimta.queue`` logger.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gevent import Greenlet, Timeout

from slimta import logging as slimta_logging
from slimta import queue as _queue  # for _queue.time: see the module docstring
from slimta.bounce.dsn import recipients_to_notify
from slimta.queue import QueueError, QueueStorage
from slimta.queue._backoff import ExponentialBackoff
from slimta.queue._outcome import Outcomes, classify, group_by_reply, transient_reply
from slimta.relay import RelayError
from slimta.smtp.reply import Reply
from slimta.util._ids import random_id

if TYPE_CHECKING:
    from collections import deque

    from gevent.event import Event
    from gevent.pool import Group

    from slimta.envelope import Envelope
    from slimta.queue._schedule import Schedule
    from slimta.relay import Relay

__all__ = ["DeliveryMixin"]

_LOG_NAME = "slimta.queue"
_log = logging.getLogger(_LOG_NAME)

_TIMED_OUT = "Delivery attempt timed out"
_GAVE_UP = " (Too many retries)"


def _default_bounce(envelope: Envelope, reply: Reply) -> Envelope | None:
    # Imported on first use: slimta.bounce builds on the queue's neighbours
    # and must not be needed just to import slimta.queue.
    try:
        bounce_class = importlib.import_module("slimta.bounce").Bounce
    except (ImportError, AttributeError):
        _log.error("slimta.bounce is not available; no bounce sent to %r", envelope.sender)
        return None
    bounce: Envelope = bounce_class(envelope, reply)
    return bounce


class DeliveryMixin:
    """Workers, direct delivery and attempt outcomes for :class:`~slimta.queue.Queue`."""

    store: QueueStorage
    relay: Relay | None
    backoff: Callable[[Envelope, int], float | None]
    bounce_factory: Callable[[Envelope, Reply], Envelope | None]
    bounce_queue: Any
    direct: Callable[[Envelope], bool] | None
    direct_timeout: float
    store_retry_delay: float
    relay_timeout: float | None
    _workers: Group
    _ready: deque[tuple[str, Envelope | None, int]]
    _spare: Greenlet[..., Any] | None
    _schedule: Schedule
    _active: set[str]
    _cancelled: set[str]
    _last_errors: dict[str, str]
    _wake: Event

    if TYPE_CHECKING:

        def _store_call(self, func: Callable[..., Any], *args: Any) -> Any: ...

        def _write(self, envelope: Envelope, now: float) -> str | QueueError: ...

        def _add_queued(self, when: float, id_: str) -> None: ...

    # -- ownership and workers -------------------------------------------------

    def _start_new(self, id_: str, envelope: Envelope) -> None:
        # A storage whose write yields lets the start-up load() list this id
        # before we get here: it may already be scheduled (take it back) or
        # even being attempted (leave that attempt alone).
        self._schedule.discard(id_)
        if id_ in self._active:
            return
        self._active.add(id_)
        self._hand_over(id_, envelope, 0)

    def _hand_over(self, id_: str, envelope: Envelope | None, attempts: int) -> None:
        """Give an id (already in ``_active``) to the delivery workers."""
        self._ready.append((id_, envelope, attempts))
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        # Keep one worker in reserve while work is waiting: a worker that
        # blocks in the relay is then replaced at once (so attempts run
        # concurrently, up to relay_pool), while a relay that never blocks
        # lets one worker drain the whole backlog without a greenlet per
        # message.  Nothing here waits for a free slot: a full pool's
        # workers take the next item when they finish.
        spare = self._spare
        if (spare is not None and not spare.dead) or not self._ready or self._workers.full():
            return
        self._spare = self._workers.spawn(self._work)

    def _work(self) -> None:
        self._spare = None
        ready = self._ready
        while ready:
            id_, envelope, attempts = ready.popleft()
            self._ensure_worker()
            if envelope is None:
                self._dequeue(id_)
            else:
                self._attempt(id_, envelope, attempts)

    def _release(self, id_: str, retry_at: float | None) -> None:
        self._active.discard(id_)
        if id_ in self._cancelled:
            self._cancelled.discard(id_)
        elif retry_at is not None:
            self._add_queued(retry_at, id_)

    def _dequeue(self, id_: str) -> None:
        try:
            envelope, attempts = self._store_call(self.store.get, id_)
        except KeyError:
            self._release(id_, None)  # removed meanwhile
            return
        except Exception:  # noqa: BLE001 - a storage fault must not lose the id
            slimta_logging.log_exception(_LOG_NAME, id=id_)
            self._release(id_, _queue.time.time() + self.store_retry_delay)
            return
        self._attempt(id_, envelope, attempts)

    def _attempt(self, id_: str, envelope: Envelope, attempts: int) -> None:
        try:
            recipients = list(envelope.recipients)
            outcomes = self._call_relay(envelope, attempts, recipients, self.relay_timeout)
            if id_ in self._cancelled:
                retry_at = None
            elif outcomes is None:  # the common case: all delivered
                self._store_call(self.store.remove, id_)
                self._last_errors.pop(id_, None)
                retry_at = None
            else:
                retry_at = self._settle(id_, envelope, recipients, outcomes)
        except Exception:  # noqa: BLE001 - keep the id queued whatever went wrong
            slimta_logging.log_exception(_LOG_NAME, id=id_)
            retry_at = _queue.time.time() + self.store_retry_delay
        self._release(id_, retry_at)

    # -- direct delivery -------------------------------------------------------

    def _enqueue_direct(self, envelope: Envelope, now: float) -> tuple[Envelope, str | QueueError]:
        """Attempt ``envelope`` first if :attr:`direct` says so; store what is left."""
        rest: Envelope | None = envelope
        try:
            wanted = bool(self.direct(envelope)) if self.direct is not None else False
        except Exception:  # noqa: BLE001 - a broken predicate means the usual path
            slimta_logging.log_exception(_LOG_NAME)
            wanted = False
        if wanted:
            if getattr(envelope, "timestamp", None) is None:
                envelope.timestamp = now
            recipients = list(envelope.recipients)
            outcomes = self._call_relay(envelope, 0, recipients, self.direct_timeout)
            if outcomes is None or not (outcomes.permanent or outcomes.transient):
                rest = None
            elif outcomes.delivered:
                done = set(outcomes.delivered)
                rest = envelope.copy([r for i, r in enumerate(recipients) if i not in done])
        if rest is None:
            id_ = random_id()  # for the reply and the logs: nothing is stored
            _log.debug("delivered before storing: id=%s", id_)
            return envelope, id_
        # Undelivered recipients are stored and attempted again at once:
        # retries, bounces and DSNs then work as for any queued message.
        stored = self._write(rest, now)
        if not isinstance(stored, QueueError):
            self._start_new(stored, rest)
        return envelope, stored

    # -- one attempt's outcome -------------------------------------------------

    def _call_relay(
        self, envelope: Envelope, attempts: int, recipients: list[str], timeout: float | None
    ) -> Outcomes | None:
        """Attempt delivery; ``None`` means every recipient was delivered."""
        relay = self.relay
        attempt = getattr(relay, "_attempt", None) or getattr(relay, "attempt")  # noqa: B009
        timer = Timeout(timeout)
        timer.start()
        try:
            result = attempt(envelope, attempts)
        except RelayError as exc:
            return classify(exc, recipients)
        except Timeout as exc:
            text = _TIMED_OUT if exc is timer else f"Unhandled delivery error: {exc!r}"
            return classify(transient_reply(text), recipients)
        except Exception as exc:  # noqa: BLE001 - a relay bug is a temporary failure
            slimta_logging.log_exception(_LOG_NAME)
            return classify(transient_reply(f"Unhandled delivery error: {exc}"), recipients)
        finally:
            timer.cancel()
        if result is None or (isinstance(result, Reply) and (result.code or "")[:1] == "2"):
            return None
        return classify(result, recipients)

    def _next_delay(self, envelope: Envelope, attempts: int) -> float | None:
        try:
            delay = self.backoff(envelope, attempts)
        except Exception:  # noqa: BLE001 - a broken backoff must not strand the message
            slimta_logging.log_exception(_LOG_NAME)
            return ExponentialBackoff().delay(attempts)
        if delay is None:
            return None
        try:
            delay = float(delay)
        except (TypeError, ValueError):
            return self.store_retry_delay
        return delay if math.isfinite(delay) and delay >= 0 else self.store_retry_delay

    def _settle(
        self, id_: str, envelope: Envelope, recipients: list[str], outcomes: Outcomes
    ) -> float | None:
        """Record an attempt's outcome; return when to retry, or ``None``."""
        now = _queue.time.time()
        permanent = list(outcomes.permanent)
        transient = outcomes.transient
        retry_at: float | None = None
        if transient:
            attempts = self._store_call(self.store.increment_attempts, id_)
            retry_env = envelope
            if len(transient) != len(recipients):
                retry_env = envelope.copy([recipients[i] for i, _ in transient])
            delay = self._next_delay(retry_env, attempts)
            if delay is None:
                permanent += [(i, Reply(r.code, f"{r.message}{_GAVE_UP}")) for i, r in transient]
                transient = []
            else:
                retry_at = now + delay
        unbounced = self._bounce(envelope, recipients, permanent)
        if not transient and not unbounced:
            self._store_call(self.store.remove, id_)
            self._last_errors.pop(id_, None)
            return None
        done = outcomes.delivered + [i for i, _ in permanent if i not in unbounced]
        if done:
            self._store_call(self.store.set_recipients_delivered, id_, sorted(done))
        if retry_at is None:
            retry_at = now + self.store_retry_delay  # only bounces failed to store
        first = transient[0][1] if transient else Reply("451", "4.3.0 Bounce could not be queued")
        error = f"{first.code} {first.message}"
        self._last_errors[id_] = error
        self._store_call(self.store.set_last_error, id_, error)
        self._store_call(self.store.set_timestamp, id_, retry_at)
        return retry_at

    def _bounce(
        self, envelope: Envelope, recipients: list[str], failures: list[tuple[int, Reply]]
    ) -> set[int]:
        """Store a bounce per distinct reply; return the indexes not bounced."""
        if not failures or not envelope.sender:
            return set()  # nothing failed, or a null sender: never bounce a bounce
        unbounced: set[int] = set()
        for reply, indexes in group_by_reply(failures):
            # RFC 3461: a recipient given NOTIFY=NEVER (or a NOTIFY without
            # FAILURE) gets no failure notice; it is still done with.
            notify = recipients_to_notify(envelope, [recipients[i] for i in indexes], "failed")
            if not notify:
                continue
            failed_env = envelope
            if len(notify) != len(recipients):
                failed_env = envelope.copy(notify)
            try:
                bounce = self.bounce_factory(failed_env, reply)
                if bounce is None:
                    continue
                results = self.bounce_queue.enqueue(bounce)
            except Exception:  # noqa: BLE001 - keep the recipients queued instead
                slimta_logging.log_exception(_LOG_NAME)
                unbounced.update(indexes)
                continue
            if not results or any(isinstance(res, BaseException) for _, res in results):
                unbounced.update(indexes)
        return unbounced
