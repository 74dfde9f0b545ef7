"""QueueClock: the queue's retries follow the fake clock, not the real one."""

from __future__ import annotations

import itertools
import time

import gevent
import pytest
from gevent.event import Event

import slimta.queue
import slimta.queue._backoff
from slimta.queue import ExponentialBackoff, Queue
from slimta.queue.dict import DictStorage
from slimta.relay import TransientRelayError
from slimta.testing import HelperError, QueueClock, RecordingRelay, make_envelope


class TimedRelay(RecordingRelay):
    """Also records the clock time of each attempt."""

    def __init__(self, clock: QueueClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def attempt(self, envelope, attempts):
        self.times.append(self.clock.time())
        return super().attempt(envelope, attempts)


def test_retries_follow_the_default_backoff_without_waiting(queue_clock):
    relay = TimedRelay(queue_clock)
    relay.default = TransientRelayError("busy")
    queue = Queue(DictStorage(), relay)
    queue.start()
    start = queue_clock.time()
    real_start = time.monotonic()
    try:
        queue.enqueue(make_envelope())
        relay.wait_for(1)
        queue_clock.advance(299)
        assert len(relay.attempts) == 1
        queue_clock.advance(1)
        assert len(relay.attempts) == 2
        queue_clock.advance(3 * 3600)
        offsets = [t - start for t in relay.times]
        # Postfix's schedule: 300 s, then doubling, capped at 4000 s.
        assert offsets[:5] == [0, 300, 900, 2100, 4500]
        assert all(b - a == 4000 for a, b in itertools.pairwise(offsets[4:]))
    finally:
        queue.kill()
    assert time.monotonic() - real_start < 5


def test_the_message_bounces_when_its_lifetime_is_over(queue_clock):
    relay = RecordingRelay(default=TransientRelayError("busy"))
    bounced = Event()
    queue = Queue(
        DictStorage(),
        relay,
        backoff=ExponentialBackoff(initial=60, maximum=600, lifetime=3600),
        bounce_factory=lambda env, reply: bounced.set(),
    )
    queue.start()
    try:
        queue.enqueue(make_envelope())
        relay.wait_for(1)
        queue_clock.advance(3000)
        assert not bounced.is_set()
        queue_clock.advance(1200)
        assert bounced.is_set()
    finally:
        queue.kill()


def test_the_clock_patches_only_while_installed():
    real_time = slimta.queue.time
    with QueueClock(start=1000.0) as clock:
        assert slimta.queue.time.time() == 1000.0
        assert slimta.queue._backoff.time.time() == 1000.0
        assert slimta.queue.time.monotonic is time.monotonic  # the rest is the real module
        clock.advance(5)
        assert slimta.queue.time.time() == 1005.0
    assert slimta.queue.time is real_time
    assert slimta.queue.Event is Event
    assert slimta.queue.gevent is gevent


def test_sleep_and_wait_run_on_the_clock():
    with QueueClock(start=0.0) as clock:
        done: list[float] = []
        gevent.spawn(lambda: (clock.sleep(10), done.append(clock.time())))
        event = Event()
        waited: list[bool] = []
        gevent.spawn(lambda: waited.append(clock.wait(event, 20)))
        gevent.sleep(0)
        assert clock.waiting == [10.0, 20.0]
        clock.advance(9.5)
        assert done == []
        clock.advance(0.5)
        assert done == [10.0]
        event.set()
        gevent.sleep(0)
        assert waited == [True]
        assert clock.wait(event, 0) is True
        assert clock.wait(Event(), 0) is False


def test_misuse_is_reported():
    clock = QueueClock()
    with pytest.raises(HelperError, match="not installed"):
        clock.advance(1)
    with clock:
        with pytest.raises(HelperError, match="only moves forward"):
            clock.advance(-1)
        with pytest.raises(HelperError, match="already installed"):
            clock.install()


def test_uninstall_wakes_sleepers():
    clock = QueueClock()
    clock.install()
    woke: list[bool] = []
    gevent.spawn(lambda: (clock.sleep(1e9), woke.append(True)))
    gevent.sleep(0)
    clock.uninstall()
    gevent.sleep(0)
    assert woke == [True]
