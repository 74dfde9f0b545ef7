"""A controllable clock for :class:`~slimta.queue.Queue`: test retries without waiting.

While a :class:`QueueClock` is installed (``with QueueClock() as clock:``,
or the ``queue_clock`` pytest fixture), :mod:`slimta.queue` reads the time
from it and its scheduler sleeps on it, so a retry due in five minutes
happens when the test calls ``clock.advance(300)``::

    with QueueClock() as clock:
        queue = Queue(DictStorage(), relay, backoff=lambda env, n: 60.0)
        queue.start()
        queue.enqueue(make_envelope())    # first attempt: now
        clock.advance(60)                 # the retry is attempted
        ...

Create the queue *inside* the clock (its scheduler's wake-up event is
made in the constructor).  Only :mod:`slimta.queue` (the scheduler, the
default :class:`~slimta.queue.ExponentialBackoff` and inspection) sees the
clock: relays, storage and ``relay_timeout`` keep real time.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from slimta.testing._errors import HelperError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["QueueClock"]

# Where slimta.queue looks the time up.  The clock replaces these module
# attributes while installed (see _install); nothing else is touched.
_TIME_USERS = ("slimta.queue", "slimta.queue._backoff", "slimta.queue._inspect")

# Wake-ups fired by one advance() before it gives up: a scheduler that keeps
# asking to be woken at the same instant would otherwise loop for ever.
_MAX_WAKEUPS = 100_000


class _TimeModule:
    """Stands in for the ``time`` module inside slimta.queue: ``time()`` is the clock's."""

    def __init__(self, clock: QueueClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.time()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class _GeventModule:
    """Stands in for ``gevent`` inside slimta.queue: ``sleep()`` is the clock's."""

    def __init__(self, clock: QueueClock) -> None:
        self._clock = clock

    def sleep(self, seconds: float = 0) -> None:
        self._clock.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(gevent, name)


class QueueClock:
    """A fake clock for :mod:`slimta.queue`, moved only by :meth:`advance`.

    Args:
        start: The time to start at (a Unix timestamp); the real time by
            default, so timestamps set elsewhere stay comparable.
        settle_timeout: The longest :meth:`advance` waits, in real
            seconds, for the queue to act on what became due.
    """

    def __init__(self, start: float | None = None, settle_timeout: float = 5.0) -> None:
        self._now = time.time() if start is None else float(start)
        self.settle_timeout = settle_timeout
        self._sleepers: list[tuple[float, int, Event]] = []
        self._order = itertools.count()
        self._saved: list[tuple[Any, str, Any]] = []

    # -- the clock interface -----------------------------------------------------

    def time(self) -> float:
        """The clock's current time (a Unix timestamp)."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Block the calling greenlet until the clock has moved ``seconds`` on."""
        if seconds <= 0:
            gevent.sleep(0)
            return
        self._alarm(seconds).wait()

    def wait(self, event: Any, timeout: float | None = None) -> bool:
        """Wait for ``event`` to be set, or for ``timeout`` clock seconds.

        Returns:
            Whether ``event`` is set.
        """
        if timeout is None:
            return bool(event.wait())
        if timeout <= 0 or event.is_set():
            gevent.sleep(0)
            return bool(event.is_set())
        alarm = self._alarm(timeout)
        gevent.wait([event, alarm], count=1)
        alarm.set()  # it is popped (or skipped) by advance() either way
        return bool(event.is_set())

    def _alarm(self, seconds: float) -> Event:
        alarm = Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), alarm))
        return alarm

    @property
    def waiting(self) -> list[float]:
        """The clock times at which greenlets asked to be woken, soonest first."""
        return sorted(when for when, _, alarm in self._sleepers if not alarm.is_set())

    # -- moving the clock --------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the clock on, waking everything due on the way, in order.

        After each wake-up the queue is given the chance to run (its
        attempts, and the retries they schedule, which are woken in turn if
        they fall within ``seconds``).  Relays that do real I/O may still be
        busy when this returns; wait for them (``RecordingRelay.wait_for``).

        Raises:
            HelperError: ``seconds`` is negative, the clock is not
                installed, or the queue kept asking to be woken without end.
        """
        if seconds < 0:
            raise HelperError(f"a clock only moves forward: advance({seconds}) asked to go back")
        if not self._saved:
            raise HelperError(
                "advance() on a QueueClock that is not installed: use 'with QueueClock() as clock:'"
            )
        target = self._now + seconds
        self._settle()
        for _ in range(_MAX_WAKEUPS):
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            when, _, alarm = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not alarm.is_set():
                alarm.set()
                self._settle()
        else:
            raise HelperError(
                f"advance({seconds}) woke the queue {_MAX_WAKEUPS} times without reaching its end"
            )
        self._now = target
        self._settle()

    def _settle(self) -> None:
        # Let every greenlet that can run now do so, until the loop is idle.
        timer = gevent.Timeout(self.settle_timeout)
        timer.start()
        try:
            for _ in range(3):
                gevent.idle()
                gevent.sleep(0)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
        finally:
            timer.cancel()

    # -- installing --------------------------------------------------------------

    def install(self) -> None:
        """Make :mod:`slimta.queue` use this clock (undone by :meth:`uninstall`).

        Raises:
            HelperError: It is already installed.
        """
        import importlib

        if self._saved:
            raise HelperError("this QueueClock is already installed")
        clock = self

        class _ClockEvent(Event):
            # The queue scheduler's wake-up event: its timed waits run on the clock.
            def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
                if timeout is None or not clock._saved:
                    return bool(super().wait(timeout))
                return clock.wait(self, timeout)

        fake_time = _TimeModule(self)
        for name in _TIME_USERS:
            module = importlib.import_module(name)
            self._patch(module, "time", fake_time)
        queue_module = importlib.import_module("slimta.queue")
        self._patch(queue_module, "gevent", _GeventModule(self))
        self._patch(queue_module, "Event", _ClockEvent)

    def _patch(self, module: Any, name: str, value: Any) -> None:
        self._saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    def uninstall(self) -> None:
        """Give :mod:`slimta.queue` the real clock back and wake every sleeper."""
        saved, self._saved = self._saved, []
        for module, name, value in reversed(saved):
            setattr(module, name, value)
        for _, _, alarm in self._sleepers:
            alarm.set()
        self._sleepers.clear()

    def __enter__(self) -> QueueClock:
        self.install()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.uninstall()
