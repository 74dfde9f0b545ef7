"""Group commit for directory fsyncs, shared by the disk queue and Maildir.

Making a rename or a new link durable takes an ``fsync`` of the directory.
When many greenlets do that to one directory at once, one fsync that starts
after all their renames covers all of them: each waiter takes a ticket, and
a flush started after the ticket was taken makes it durable.  The flush
itself runs wherever the caller's ``flush`` callable puts it (a thread pool),
so the hub never blocks.
"""

from __future__ import annotations

from collections.abc import Callable

from gevent.event import Event

__all__ = ["GroupFsync"]


class GroupFsync:
    """Coalesce concurrent fsyncs of one directory.

    Args:
        flush: fsyncs the directory (blocking the calling greenlet only);
            exceptions pass through to every waiter of that flush.
    """

    def __init__(self, flush: Callable[[], object]) -> None:
        self._flush = flush
        self._requested = 0  # tickets handed out
        self._done = 0  # every ticket up to this one is durable
        self._running = False
        self._changed = Event()

    def sync(self) -> None:
        """Return once a directory fsync started after this call has finished.

        Call it after your rename or unlink returned.
        """
        self._requested += 1
        ticket = self._requested
        while self._done < ticket:
            if self._running:
                self._changed.wait()
                continue
            self._running = True
            target = self._requested
            try:
                self._flush()
                self._done = max(self._done, target)
            finally:
                self._running = False
                changed, self._changed = self._changed, Event()
                changed.set()
