"""A deque whose pops wait, cooperatively, for an item.

The relay pool keeps its pending deliveries in a :class:`BlockingDeque`: idle
workers sit in :meth:`~BlockingDeque.popleft` and wake as soon as work is
appended, without polling and without blocking other greenlets.

Theory of operation: a gevent :class:`~gevent.lock.Semaphore` counts wake-up
permits.  Every method that adds items releases one permit per item actually
added, and a pop on a non-empty deque consumes one without waiting, so the
count tracks ``len(self)``.  The count is only a hint, though: a pop always
re-checks ``len(self)`` after it wakes and waits again if another greenlet got
there first.  That keeps pops correct even when items leave by a path that
does not touch the semaphore (``del d[0]``, an item pushed out by
``maxlen``), and a pop killed by :class:`gevent.Timeout` while waiting leaves
its permit for the next waiter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar

from gevent.lock import Semaphore

__all__ = ["BlockingDeque"]

_T = TypeVar("_T")


class BlockingDeque(deque[_T]):
    """A :class:`collections.deque` whose :meth:`pop` and :meth:`popleft` block.

    Popping from an empty deque waits (yielding to other greenlets) until an
    item is added, instead of raising :class:`IndexError`.  Wrap the call in
    :class:`gevent.Timeout` to bound the wait.  All other deque behaviour is
    unchanged.

    Args:
        iterable: Initial items.
        maxlen: Optional maximum length, as for :class:`collections.deque`.
    """

    def __init__(self, iterable: Iterable[_T] = (), maxlen: int | None = None) -> None:
        super().__init__(iterable, maxlen)
        self.sema = Semaphore(len(self))

    def _released(self, before: int) -> None:
        # One permit per item that really arrived: with maxlen, adding to a
        # full deque pushes an item out and the length does not grow.
        for _ in range(len(self) - before):
            self.sema.release()

    def _wait_for_item(self) -> None:
        """Return once the deque is non-empty, consuming one permit."""
        if len(self):
            self.sema.acquire(blocking=False)
            return
        while True:
            self.sema.acquire()
            if len(self):
                return
            # A stale permit (its item was taken by a path that bypassed the
            # semaphore); go back to waiting.

    def append(self, x: _T, /) -> None:
        """Add *x* to the right end and wake one waiting pop."""
        before = len(self)
        super().append(x)
        self._released(before)

    def appendleft(self, x: _T, /) -> None:
        """Add *x* to the left end and wake one waiting pop."""
        before = len(self)
        super().appendleft(x)
        self._released(before)

    def extend(self, iterable: Iterable[_T], /) -> None:
        """Add each item to the right end, waking a waiting pop per item."""
        before = len(self)
        super().extend(iterable)
        self._released(before)

    def extendleft(self, iterable: Iterable[_T], /) -> None:
        """Add each item to the left end, waking a waiting pop per item."""
        before = len(self)
        super().extendleft(iterable)
        self._released(before)

    def insert(self, i: int, x: _T, /) -> None:
        """Insert *x* before position *i* and wake one waiting pop."""
        before = len(self)
        super().insert(i, x)
        self._released(before)

    def __iadd__(self, value: Iterable[_T], /) -> BlockingDeque[_T]:
        # deque's += does not go through extend(), so count the new items here.
        self.extend(value)
        return self

    def pop(self) -> _T:  # type: ignore[override]  # deque.pop takes no index, unlike MutableSequence.pop
        """Remove and return the rightmost item, waiting for one if empty."""
        self._wait_for_item()
        return super().pop()

    def popleft(self) -> _T:
        """Remove and return the leftmost item, waiting for one if empty."""
        self._wait_for_item()
        return super().popleft()

    def remove(self, value: Any, /) -> None:
        """Remove the first occurrence of *value* (:class:`ValueError` if absent)."""
        super().remove(value)
        self.sema.acquire(blocking=False)

    def clear(self) -> None:
        """Remove every item."""
        super().clear()
        # Drop the permits of the items that just went away.
        while self.sema.acquire(blocking=False):
            pass
