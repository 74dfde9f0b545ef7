from __future__ import annotations

from collections import deque

import gevent
import pytest

from slimta.util.deque import BlockingDeque


def _spawn_popleft(d: BlockingDeque[int]) -> gevent.Greenlet:
    g = gevent.spawn(d.popleft)
    gevent.sleep(0)  # let it reach the wait
    return g


def test_is_a_deque_and_pops_without_waiting_when_full() -> None:
    d = BlockingDeque([1, 2, 3])
    assert isinstance(d, deque)
    assert d.popleft() == 1
    assert d.pop() == 3
    assert list(d) == [2]


@pytest.mark.parametrize(
    ("method", "arg"),
    [("append", 7), ("appendleft", 7), ("extend", [7]), ("extendleft", [7])],
)
def test_popleft_waits_until_an_item_is_added(method: str, arg: object) -> None:
    d: BlockingDeque[int] = BlockingDeque()
    g = _spawn_popleft(d)
    assert not g.ready()
    getattr(d, method)(arg)
    assert g.get(timeout=1) == 7
    assert len(d) == 0


def test_pop_waits_too() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    g = gevent.spawn(d.pop)
    gevent.sleep(0)
    assert not g.ready()
    d.insert(0, 9)
    assert g.get(timeout=1) == 9


def test_iadd_wakes_waiter() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    g = _spawn_popleft(d)
    d += [5]
    assert g.get(timeout=1) == 5


def test_each_item_wakes_exactly_one_waiter_in_order() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    waiters = [_spawn_popleft(d) for _ in range(3)]
    d.extend([10, 20])
    gevent.sleep(0.01)
    done = [w for w in waiters if w.ready()]
    assert [w.value for w in done] == [10, 20]
    # The third is still waiting: two items woke two waiters, no more.
    assert not waiters[2].ready()
    d.append(30)
    assert waiters[2].get(timeout=1) == 30


def test_waiting_pop_can_be_timed_out_and_leaves_permit_for_next() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        d.popleft()
    d.append(1)
    assert d.popleft() == 1


def test_item_taken_by_other_path_does_not_fool_waiter() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    d.append(1)
    del d[0]  # bypasses the semaphore: one stale permit remains
    g = _spawn_popleft(d)
    gevent.sleep(0.01)
    # The stale permit was consumed, the deque re-checked and found empty.
    assert not g.ready()
    d.append(2)
    assert g.get(timeout=1) == 2


def test_clear_and_remove_drop_permits() -> None:
    d = BlockingDeque([1, 2, 3])
    d.remove(2)
    assert list(d) == [1, 3]
    with pytest.raises(ValueError, match="not in deque"):
        d.remove(99)
    d.clear()
    assert d.sema.counter == 0
    g = _spawn_popleft(d)
    gevent.sleep(0.01)
    assert not g.ready()
    d.append(4)
    assert g.get(timeout=1) == 4


def test_maxlen_at_and_past_the_limit() -> None:
    d = BlockingDeque([1, 2], maxlen=2)
    assert d.sema.counter == 2
    d.append(3)  # one past the limit pushes 1 out: still two items
    assert list(d) == [2, 3]
    assert d.sema.counter == 2
    assert [d.popleft(), d.popleft()] == [2, 3]
    g = _spawn_popleft(d)
    gevent.sleep(0.01)
    assert not g.ready()
    d.append(4)
    assert g.get(timeout=1) == 4


def test_many_producers_and_consumers_lose_nothing() -> None:
    d: BlockingDeque[int] = BlockingDeque()
    consumers = [gevent.spawn(lambda: [d.popleft() for _ in range(100)]) for _ in range(10)]

    def produce(base: int) -> None:
        for i in range(100):
            d.append(base + i)
            if i % 7 == 0:
                gevent.sleep(0)

    producers = [gevent.spawn(produce, n * 1000) for n in range(10)]
    gevent.joinall(producers, raise_error=True)
    got = sorted(x for c in consumers for x in c.get(timeout=2))
    assert got == sorted(n * 1000 + i for n in range(10) for i in range(100))
    assert len(d) == 0
