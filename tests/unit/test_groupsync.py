"""GroupFsync: one directory fsync serves every waiter that arrived before it started."""

from __future__ import annotations

import gevent
import pytest

from slimta.util._groupsync import GroupFsync


def test_concurrent_waiters_share_flushes_and_each_is_covered():
    started: list[int] = []
    covered: list[int] = []

    def flush():
        started.append(len(requested))
        gevent.sleep(0.01)

    requested: list[int] = []
    group = GroupFsync(flush)

    def waiter(n):
        requested.append(n)
        group.sync()
        covered.append(n)

    # (A Timeout, not joinall(timeout=...): after a long CPU-bound test the
    # loop's cached clock is stale, and joinall's timer would fire at once.)
    with gevent.Timeout(5):
        gevent.joinall([gevent.spawn(waiter, n) for n in range(50)], raise_error=True)
    assert sorted(covered) == list(range(50))
    # Far fewer flushes than waiters, and the last flush started after the
    # last request (so it covers it).
    assert len(started) < 10
    assert started[-1] == 50


def test_flush_error_reaches_its_waiters_and_the_next_flush_runs():
    calls = []

    def flush():
        calls.append(1)
        if len(calls) == 1:
            raise OSError(5, "EIO")

    group = GroupFsync(flush)
    with pytest.raises(OSError, match="EIO"):
        group.sync()
    group.sync()
    assert len(calls) == 2
