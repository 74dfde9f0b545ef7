"""The queue's in-memory timetable: which stored envelope is due when.

Theory of operation: a binary heap of ``(when, seq, id)`` gives the next
due envelope in O(log n), and a dict ``id -> when`` says which heap entry is
current.  Rescheduling or removing an id does not search the heap; it only
changes the dict, and the old heap entry becomes stale and is skipped when
it reaches the top (its time no longer matches the dict, or the id is gone).
``seq`` breaks ties so ids never need comparing and equal times pop in
insertion order.
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["Schedule"]


class Schedule:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._when: dict[str, float] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._when)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._when

    def when(self, id_: str) -> float | None:
        return self._when.get(id_)

    def add(self, id_: str, when: float) -> None:
        """Schedule ``id_`` at ``when``, replacing any earlier schedule."""
        self._when[id_] = when
        heapq.heappush(self._heap, (when, next(self._seq), id_))

    def discard(self, id_: str) -> bool:
        return self._when.pop(id_, None) is not None

    def _drop_stale(self) -> None:
        heap, current = self._heap, self._when
        while heap and current.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    def next_time(self) -> float | None:
        """The earliest scheduled time, or ``None`` when nothing is scheduled."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def has_due(self, now: float) -> bool:
        first = self.next_time()
        return first is not None and first <= now

    def pop_due(self, now: float) -> str | None:
        """Unschedule and return one id due at ``now``, or ``None``."""
        if not self.has_due(now):
            return None
        _, _, id_ = heapq.heappop(self._heap)
        del self._when[id_]
        return id_

    def flush(self, now: float) -> None:
        """Make everything due at ``now``, keeping the current order."""
        order = sorted(self._when.items(), key=lambda item: item[1])
        self._heap = []
        self._when = {}
        for id_, _ in order:
            self.add(id_, now)
