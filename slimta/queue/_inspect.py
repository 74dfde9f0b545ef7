"""Queue inspection: listing, counting, removing and retrying envelopes.

python-slimta offers only :meth:`~slimta.queue.QueueStorage.get_info`; an
operator also needs to see what is queued and why it is stuck, drop a
message, or push one out now.  :class:`InspectionMixin` adds that to
:class:`~slimta.queue.Queue`, combining what storage knows (metadata that
survives restarts) with what only the running queue knows (which attempts
are in flight, the in-memory timetable).
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from slimta.queue import QueueStorage
    from slimta.queue._schedule import Schedule

__all__ = ["InspectionMixin", "QueueEntry"]


@dataclasses.dataclass(frozen=True, slots=True)
class QueueEntry:
    """One queued envelope, as listed by :meth:`Queue.inspect`.

    .. versionadded:: 0.1.0 (not in python-slimta).

    Attributes:
        id: The storage id.
        sender: The envelope sender.
        recipients: The recipients still to be delivered.
        attempts: How many delivery attempts failed so far.
        next_attempt: When the next attempt is due (a Unix timestamp).
        last_error: The reply of the last failed attempt, as text, if known.
        state: ``'queued'`` (never attempted), ``'deferred'`` (failed at
            least once, waiting to retry) or ``'active'`` (an attempt is in
            progress).
    """

    id: str
    sender: str | None
    recipients: tuple[str, ...]
    attempts: int
    next_attempt: float | None
    last_error: str | None = None
    state: str = "queued"


class InspectionMixin:
    store: QueueStorage
    _schedule: Schedule
    _active: set[str]
    _cancelled: set[str]
    _last_errors: dict[str, str]

    def _store_call(self, func: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def _add_queued(self, when: float, id_: str) -> None:
        raise NotImplementedError

    def inspect(self) -> list[QueueEntry]:
        """List the queued envelopes with their state.

        .. versionadded:: 0.1.0 (not in python-slimta).

        Returns:
            One :class:`QueueEntry` per stored envelope, soonest first.
        """
        entries: list[QueueEntry] = []
        for entry in self._store_call(lambda: list(self.store.inspect())):
            state = "active" if entry.id in self._active else entry.state
            when = self._schedule.when(entry.id)
            entries.append(
                dataclasses.replace(
                    entry,
                    state=state,
                    next_attempt=entry.next_attempt if when is None else when,
                    last_error=entry.last_error or self._last_errors.get(entry.id),
                )
            )
        entries.sort(key=lambda e: (e.next_attempt is None, e.next_attempt or 0.0))
        return entries

    def counts(self) -> dict[str, int]:
        """Count the queued envelopes by state.

        .. versionadded:: 0.1.0 (not in python-slimta).

        Returns:
            ``{'queued': n, 'deferred': n, 'active': n, 'total': n}``.
        """
        by_state = Counter(entry.state for entry in self.inspect())
        result = {state: by_state.get(state, 0) for state in ("queued", "deferred", "active")}
        result["total"] = sum(by_state.values())
        return result

    def remove(self, id: str) -> bool:  # noqa: A002 - same name as QueueStorage.remove
        """Delete a queued envelope without delivering or bouncing it.

        An attempt already in flight is not interrupted, but its outcome is
        not recorded (no retry, no bounce).

        .. versionadded:: 0.1.0 (not in python-slimta).

        Returns:
            Whether ``id`` was queued.
        """
        found = self._schedule.discard(id) or id in self._active
        try:
            self._store_call(self.store.get, id)
            found = True
        except KeyError:
            pass
        if id in self._active:
            self._cancelled.add(id)
        self._store_call(self.store.remove, id)
        self._last_errors.pop(id, None)
        return found

    def retry(self, id: str) -> bool:  # noqa: A002 - same name as QueueStorage methods
        """Attempt delivery of ``id`` now instead of at its scheduled time.

        .. versionadded:: 0.1.0 (not in python-slimta).

        Returns:
            Whether ``id`` is queued (an attempt already in flight counts).
        """
        if id in self._active:
            return True
        if id not in self._schedule:
            try:
                self._store_call(self.store.get, id)
            except KeyError:
                return False
        now = time.time()
        self._store_call(self.store.set_timestamp, id, now)
        self._add_queued(now, id)
        return True
