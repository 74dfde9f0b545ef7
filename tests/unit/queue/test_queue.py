"""Queue behaviour on DictStorage with scripted fake relays (no sockets)."""

from __future__ import annotations

import itertools
import time

import gevent
import pytest

from slimta.envelope import Envelope
from slimta.queue import ExponentialBackoff, Queue, QueueError
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.smtp.reply import Reply

from .helpers import RecordingStorage, ScriptedRelay, make_envelope, meta, wait_until

FAST = lambda envelope, attempts: 0.01  # noqa: E731 - retry almost at once


@pytest.fixture
def queues():
    started: list[Queue] = []
    yield started
    for queue in started:
        queue.kill()


def start(queues, *args, **kwargs) -> Queue:
    queue = Queue(*args, **kwargs)
    queue.start()
    queues.append(queue)
    return queue


class Bounces:
    """A bounce_factory that makes distinct null-sender envelopes and records them."""

    def __init__(self) -> None:
        self.made: list[tuple[Envelope, Reply, Envelope]] = []

    def __call__(self, envelope, reply):
        bounce = Envelope("", [envelope.sender])
        bounce.parse(
            b"Subject: bounce\r\nMessage-Id: <bounce"
            + str(len(self.made)).encode()
            + b"@x>\r\n\r\nfailed\r\n"
        )
        self.made.append((envelope, reply, bounce))
        return bounce


# -- enqueue ---------------------------------------------------------------


def test_enqueue_stores_then_delivers_and_removes(queues):
    storage = DictStorage()
    relay = ScriptedRelay()
    queue = start(queues, storage, relay)
    env = make_envelope()
    [(got_env, id_)] = queue.enqueue(env)
    assert got_env is env
    assert isinstance(id_, str)
    wait_until(lambda: not storage.env_db, what="removal")
    assert len(relay.calls) == 1


def test_enqueue_without_relay_only_stores():
    storage = DictStorage()
    queue = Queue(storage)
    [(_, id_)] = queue.enqueue(make_envelope())
    gevent.sleep(0.02)
    assert storage.get(id_)[1] == 0


def test_enqueue_sets_missing_received_timestamp():
    queue = Queue(DictStorage())
    env = make_envelope()
    assert env.timestamp is None
    queue.enqueue(env)
    assert env.timestamp == pytest.approx(time.time(), abs=5)


def test_queue_policies_may_replace_the_envelope(queues):
    class Split:
        def apply(self, envelope):
            return [envelope.copy([rcpt]) for rcpt in envelope.recipients]

    storage = DictStorage()
    queue = Queue(storage)
    queue.add_policy(Split())
    results = queue.enqueue(make_envelope(rcpts=["a@t", "b@t"]))
    assert [env.recipients for env, _ in results] == [["a@t"], ["b@t"]]
    assert len({id_ for _, id_ in results}) == 2
    assert len(storage.env_db) == 2


def test_add_policy_rejects_non_policies():
    with pytest.raises(TypeError):
        Queue(DictStorage()).add_policy(object())


def test_storage_error_on_write_gives_queue_error_and_no_delivery(queues):
    storage = RecordingStorage()
    storage.fail["write"] = OSError("disk full")
    relay = ScriptedRelay()
    queue = start(queues, storage, relay)
    [(_, result)] = queue.enqueue(make_envelope())
    assert isinstance(result, QueueError)
    assert result.reply is not None
    assert result.reply.code == "451"
    assert result.reply.message.startswith("4.3.0")
    gevent.sleep(0.05)
    assert relay.calls == []
    assert storage.env_db == {}
    assert storage.meta_db == {}


def test_queue_error_from_storage_is_passed_through():
    storage = RecordingStorage()
    error = QueueError("no", Reply("452", "4.3.1 full"))
    storage.fail["write"] = error
    [(_, result)] = Queue(storage, ScriptedRelay()).enqueue(make_envelope())
    assert result is error


def test_only_the_failed_write_of_a_split_is_reported(queues):
    class Split:
        def apply(self, envelope):
            return [envelope.copy([rcpt]) for rcpt in envelope.recipients]

    storage = RecordingStorage()
    storage.fail_once["write"] = OSError("transient")
    relay = ScriptedRelay()
    queue = start(queues, storage, relay)
    queue.add_policy(Split())
    results = queue.enqueue(make_envelope(rcpts=["a@t", "b@t"]))
    assert isinstance(results[0][1], QueueError)
    assert isinstance(results[1][1], str)
    wait_until(lambda: len(relay.calls) == 1)
    gevent.sleep(0.02)
    assert [c[0] for c in relay.calls] == [["b@t"]]


# -- concurrency ---------------------------------------------------------------


def test_concurrent_enqueues_deliver_each_message_exactly_once(queues):
    storage = DictStorage()
    relay = ScriptedRelay(default=lambda envelope: gevent.sleep(0.03))  # keep attempts in flight
    queue = Queue(storage, relay, backoff=FAST)
    queues.append(queue)

    def session(n):
        ids = []
        for i in range(10):
            env = make_envelope(rcpts=[f"s{n}m{i}@t"])
            ids.extend(id_ for _, id_ in queue.enqueue(env))
            gevent.sleep(0)
        return ids

    jobs = [gevent.spawn(session, n) for n in range(200)]
    gevent.sleep(0)
    gevent.sleep(0)
    queue.start()  # its load() of stored ids races with the first attempts
    gevent.joinall(jobs, raise_error=True)
    assert len({id_ for job in jobs for id_ in job.value}) == 2000
    queue.flush()  # a flush racing with the first attempts must not duplicate them
    wait_until(lambda: not storage.env_db, timeout=10, what="all delivered")
    gevent.sleep(0.05)
    assert len(relay.delivered) == 2000
    assert set(relay.delivered.values()) == {1}
    assert len(relay.calls) == 2000


class _YieldingStorage(DictStorage):
    """Like a disk or Redis backend: write() stores the envelope, then yields."""

    def write(self, envelope, timestamp):
        id_ = super().write(envelope, timestamp)
        gevent.sleep(0.001)  # the start-up load() can list the id meanwhile
        return id_

    def load(self):
        gevent.sleep(0)
        return super().load()


def test_load_racing_with_a_yielding_write_attempts_once(queues):
    # Regression: load() listed an id written but not yet handed to the
    # workers; the id was then attempted twice at the same moment.
    storage = _YieldingStorage()
    in_flight: set[str] = set()
    overlaps: list[str] = []

    def deliver(envelope):
        key = envelope.recipients[0]
        if key in in_flight:
            overlaps.append(key)
        in_flight.add(key)
        gevent.sleep(0.02)
        in_flight.discard(key)

    relay = ScriptedRelay(default=deliver)
    queue = Queue(storage, relay, backoff=FAST)
    queues.append(queue)

    def session(n):
        for i in range(5):
            queue.enqueue(make_envelope(rcpts=[f"y{n}m{i}@t"]))

    jobs = [gevent.spawn(session, n) for n in range(40)]
    gevent.sleep(0.002)
    queue.start()
    gevent.joinall(jobs, raise_error=True)
    wait_until(lambda: not storage.env_db, timeout=10, what="all delivered")
    gevent.sleep(0.05)
    assert not overlaps
    assert len(relay.delivered) == 200
    assert set(relay.delivered.values()) == {1}


# -- faults in the relay ---------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("relay bug"),
        42,
        "garbage",
        {"unknown@t": None},
        [object()],
        Reply("354", "weird"),
        RelayError("neither kind"),
    ],
    ids=["exception", "int", "str", "wrong-key", "bad-item", "bad-reply", "bare-relay-error"],
)
def test_relay_faults_are_retried_not_lost(queues, failure):
    storage = DictStorage()
    relay = ScriptedRelay([failure])
    queue = start(queues, storage, relay, backoff=FAST)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db, what="delivery after retry")
    assert len(relay.calls) == 2
    assert relay.calls[1][1] == 1  # the retry knows about the first attempt
    assert not queue.dead


def test_hanging_relay_times_out_and_is_retried(queues):
    storage = DictStorage()
    relay = ScriptedRelay(["hang"])
    queue = start(queues, storage, relay, backoff=FAST, relay_timeout=0.05)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db, what="delivery after timeout")
    assert len(relay.calls) == 2
    assert sum(relay.delivered.values()) == 1


def test_timeout_reply_is_recorded_as_last_error(queues):
    storage = DictStorage()
    relay = ScriptedRelay(["hang"])
    queue = start(queues, storage, relay, backoff=lambda e, a: 3600, relay_timeout=0.02)
    [(_, id_)] = queue.enqueue(make_envelope())
    wait_until(lambda: meta(storage, id_).get("attempts") == 1)
    assert "timed out" in meta(storage, id_)["last_error"]
    assert meta(storage, id_)["last_error"].startswith("450 4.")


def test_broken_backoff_does_not_lose_the_message(queues):
    def backoff(envelope, attempts):
        raise ValueError("oops")

    storage = DictStorage()
    queue = start(queues, storage, ScriptedRelay([TransientRelayError("x")]), backoff=backoff)
    [(_, id_)] = queue.enqueue(make_envelope())
    wait_until(lambda: meta(storage, id_).get("attempts") == 1)
    assert meta(storage, id_)["timestamp"] > time.time() + 200


def test_storage_error_after_an_attempt_reschedules(queues):
    storage = RecordingStorage()
    storage.fail_once["increment_attempts"] = OSError("blip")
    relay = ScriptedRelay([TransientRelayError("later")])
    queue = start(queues, storage, relay, backoff=FAST)
    queue.store_retry_delay = 0.02
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db, what="delivery after storage blip")
    assert len(relay.calls) == 2
    assert not queue.dead


# -- retry schedule ---------------------------------------------------------------


def test_retries_follow_the_backoff_schedule(queues):
    delays = {1: 0.05, 2: 0.1, 3: 0.02}
    seen: list[int] = []

    def backoff(envelope, attempts):
        seen.append(attempts)
        return delays[attempts]

    storage = DictStorage()
    relay = ScriptedRelay([TransientRelayError("a"), TransientRelayError("b"), TransientRelayError("c")])
    queue = start(queues, storage, relay, backoff=backoff)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db, what="final delivery")
    assert seen == [1, 2, 3]
    times = [c[2] for c in relay.calls]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.05, 0.1, 0.02], strict=True):
        assert expected - 0.005 <= gap < expected + 0.1
    assert [c[1] for c in relay.calls] == [0, 1, 2, 3]


def test_retry_time_is_written_to_storage(queues):
    storage = DictStorage()
    queue = start(queues, storage, ScriptedRelay([TransientRelayError("x")]), backoff=lambda e, a: 1000)
    [(_, id_)] = queue.enqueue(make_envelope())
    wait_until(lambda: meta(storage, id_)["attempts"] == 1)
    assert meta(storage, id_)["timestamp"] == pytest.approx(time.time() + 1000, abs=5)


def test_retries_survive_a_restart(queues):
    envs, metas = {}, {}
    first = start(
        queues, DictStorage(envs, metas), ScriptedRelay(default=TransientRelayError("down")), backoff=FAST
    )
    [(_, id_)] = first.enqueue(make_envelope())
    wait_until(lambda: meta(DictStorage(envs, metas), id_)["attempts"] >= 1)
    first.kill()
    gevent.sleep(0.02)
    assert id_ in envs
    relay = ScriptedRelay()
    start(queues, DictStorage(envs, metas), relay, backoff=FAST)
    wait_until(lambda: not envs, what="delivery after restart")
    assert relay.calls[0][1] >= 1


def test_flush_retries_everything_now(queues):
    storage = DictStorage()
    relay = ScriptedRelay([TransientRelayError("x"), TransientRelayError("y")])
    queue = start(queues, storage, relay, backoff=lambda e, a: 3600)
    queue.enqueue(make_envelope(rcpts=["a@t"]))
    queue.enqueue(make_envelope(rcpts=["b@t"]))
    wait_until(
        lambda: all(meta(storage, i)["attempts"] == 1 for i in storage.meta_db) and len(relay.calls) == 2
    )
    gevent.sleep(0.02)
    assert len(storage.env_db) == 2
    queue.flush()
    wait_until(lambda: not storage.env_db, what="flushed delivery")
    assert len(relay.calls) == 4


def test_giving_up_bounces_with_too_many_retries(queues):
    storage = DictStorage()
    bounces = Bounces()
    relay = ScriptedRelay(default=TransientRelayError("mailbox busy"))
    queue = start(
        queues, storage, relay, backoff=lambda e, a: None if a >= 2 else 0.01, bounce_factory=bounces
    )
    queue.enqueue(make_envelope())
    wait_until(lambda: not any(e.sender for e in storage.env_db.values()) and len(bounces.made) == 1)
    _, reply, _ = bounces.made[0]
    assert reply.code == "450"
    assert reply.message.endswith("(Too many retries)")
    assert len([c for c in relay.calls if c[0] == ["rcpt@example.com"]]) == 2


def test_relay_pool_bounds_concurrency_without_blocking_enqueue(queues):
    running = []
    peak = [0]

    def slow(envelope):
        running.append(1)
        peak[0] = max(peak[0], len(running))
        gevent.sleep(0.01)
        running.pop()

    storage = DictStorage()
    relay = ScriptedRelay(default=slow)
    queue = start(queues, storage, relay, relay_pool=3)
    began = time.monotonic()
    for i in range(20):
        queue.enqueue(make_envelope(rcpts=[f"r{i}@t"]))
    assert time.monotonic() - began < 0.05  # enqueue never waited for the relay
    wait_until(lambda: not storage.env_db, what="all delivered")
    assert peak[0] == 3
    assert len(relay.calls) == 20


def test_store_pool_is_used_for_writes(queues):
    storage = DictStorage()
    queue = Queue(storage, store_pool=2)
    assert queue.store_pool is not None
    assert queue.store_pool.size == 2
    [(_, id_)] = queue.enqueue(make_envelope())
    assert id_ in storage.env_db


# -- per-recipient outcomes and bounces -----------------------------------------------


def test_per_recipient_outcomes(queues):
    storage = RecordingStorage()
    bounces = Bounces()
    first = {
        "ok@t": Reply("250", "2.0.0 Ok"),
        "perm@t": PermanentRelayError("no such user"),
        "temp@t": TransientRelayError("greylisted"),
        "none@t": None,
    }
    relay = ScriptedRelay([first])
    queue = start(queues, storage, relay, backoff=FAST, bounce_factory=bounces)
    [(_, id_)] = queue.enqueue(make_envelope(rcpts=["ok@t", "perm@t", "temp@t", "none@t"]))
    wait_until(lambda: not storage.env_db, what="final delivery")
    originals = [c[0] for c in relay.calls if c[0] != ["sender@example.com"]]
    assert originals == [["ok@t", "perm@t", "temp@t", "none@t"], ["temp@t"]]
    assert ("set_recipients_delivered", (id_, [0, 1, 3])) in storage.ops
    assert len(bounces.made) == 1
    failed_env, reply, _ = bounces.made[0]
    assert failed_env.recipients == ["perm@t"]
    assert reply.code == "550"


def test_sequence_results_are_matched_by_position(queues):
    storage = DictStorage()
    relay = ScriptedRelay([[None, TransientRelayError("later")]])
    queue = start(queues, storage, relay, backoff=FAST)
    queue.enqueue(make_envelope(rcpts=["a@t", "b@t"]))
    wait_until(lambda: not storage.env_db)
    assert [c[0] for c in relay.calls] == [["a@t", "b@t"], ["b@t"]]


def test_one_bounce_per_distinct_reply(queues):
    storage = DictStorage()
    bounces = Bounces()
    no_user = Reply("550", "5.1.1 No such user")
    relay = ScriptedRelay(
        [
            {
                "a@t": PermanentRelayError("x", no_user),
                "b@t": PermanentRelayError("y", Reply("552", "5.2.2 Mailbox full")),
                "c@t": PermanentRelayError("x", Reply("550", "5.1.1 No such user")),
            }
        ]
    )
    queue = start(queues, storage, relay, bounce_factory=bounces)
    queue.enqueue(make_envelope(rcpts=["a@t", "b@t", "c@t"]))
    wait_until(lambda: len(bounces.made) == 2 and len(relay.calls) == 3)
    got = sorted((env.recipients, reply.code) for env, reply, _ in bounces.made)
    assert got == [(["a@t", "c@t"], "550"), (["b@t"], "552")]


def test_permanent_failure_bounces_and_bounce_is_delivered(queues):
    storage = DictStorage()
    bounces = Bounces()
    relay = ScriptedRelay([PermanentRelayError("rejected")])
    queue = start(queues, storage, relay, bounce_factory=bounces)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db and len(relay.calls) == 2)
    assert relay.calls[1][0] == ["sender@example.com"]


def test_bounce_is_stored_before_the_original_is_removed(queues):
    storage = RecordingStorage()
    bounces = Bounces()
    relay = ScriptedRelay([PermanentRelayError("rejected")], default=TransientRelayError("hold bounce"))
    queue = start(queues, storage, relay, bounce_factory=bounces, backoff=lambda e, a: 3600)
    [(orig, id_)] = queue.enqueue(make_envelope())
    wait_until(lambda: ("remove", id_) in storage.ops)
    bounce = bounces.made[0][2]
    assert bounce is not orig
    write_at = storage.ops.index(("write", bounce))
    remove_at = storage.ops.index(("remove", id_))
    assert write_at < remove_at


def test_original_kept_when_the_bounce_cannot_be_stored(queues):
    storage = RecordingStorage()
    bounces = Bounces()
    relay = ScriptedRelay([PermanentRelayError("rejected")])
    queue = start(queues, storage, relay, bounce_factory=bounces)
    queue.store_retry_delay = 3600
    [(_, id_)] = queue.enqueue(make_envelope())
    storage.fail["write"] = OSError("disk full")
    wait_until(lambda: len(bounces.made) == 1)
    gevent.sleep(0.02)
    assert id_ in storage.env_db
    assert ("remove", id_) not in storage.ops
    assert meta(storage, id_)["timestamp"] > time.time() + 3000


def test_null_sender_is_never_bounced(queues):
    storage = DictStorage()
    bounces = Bounces()
    relay = ScriptedRelay([PermanentRelayError("rejected")])
    queue = start(queues, storage, relay, bounce_factory=bounces)
    queue.enqueue(make_envelope(sender=""))
    wait_until(lambda: not storage.env_db)
    gevent.sleep(0.02)
    assert bounces.made == []
    assert len(relay.calls) == 1


def test_failed_bounce_is_not_bounced_again(queues):
    storage = DictStorage()
    bounces = Bounces()
    relay = ScriptedRelay(default=PermanentRelayError("everything fails"))
    queue = start(queues, storage, relay, bounce_factory=bounces)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db and len(relay.calls) == 2)
    gevent.sleep(0.02)
    assert len(bounces.made) == 1
    assert len(relay.calls) == 2


def test_bounce_factory_returning_none_sends_nothing(queues):
    storage = DictStorage()
    relay = ScriptedRelay([PermanentRelayError("no")])
    queue = start(queues, storage, relay, bounce_factory=lambda e, r: None)
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db)
    assert len(relay.calls) == 1


def test_bounces_go_to_the_bounce_queue(queues):
    bounce_store = DictStorage()
    bounce_queue = Queue(bounce_store)
    storage = DictStorage()
    queue = start(
        queues,
        storage,
        ScriptedRelay([PermanentRelayError("no")]),
        bounce_factory=Bounces(),
        bounce_queue=bounce_queue,
    )
    queue.enqueue(make_envelope())
    wait_until(lambda: not storage.env_db)
    assert [e.sender for e in bounce_store.env_db.values()] == [""]


def test_default_bounce_factory_builds_a_dsn(queues):
    storage = DictStorage()
    relay = ScriptedRelay([PermanentRelayError("no such user")], default=TransientRelayError("hold"))
    queue = start(queues, storage, relay, backoff=lambda e, a: 3600)
    queue.enqueue(make_envelope())
    wait_until(lambda: len(relay.calls) == 2)
    [bounce] = list(storage.env_db.values())
    assert bounce.sender == ""
    assert bounce.recipients == ["sender@example.com"]


# -- inspection -------------------------------------------------------------------


def test_inspect_counts_remove_and_retry(queues):
    storage = DictStorage()
    gate = gevent.event.Event()

    def held(envelope):
        gate.wait()

    relay = ScriptedRelay([TransientRelayError("busy")], default=held)
    queue = start(queues, storage, relay, backoff=lambda e, a: 3600)
    [(_, deferred)] = queue.enqueue(make_envelope(rcpts=["d@t"]))
    wait_until(lambda: meta(storage, deferred)["attempts"] == 1)
    [(_, _active)] = queue.enqueue(make_envelope(rcpts=["a@t"]))
    queue.store.write(make_envelope(rcpts=["q@t"]), time.time() + 600)  # stored, not yet due
    gevent.sleep(0.01)
    entries = {e.recipients[0]: e for e in queue.inspect()}
    assert entries["d@t"].state == "deferred"
    assert entries["d@t"].attempts == 1
    assert entries["d@t"].last_error == "450 4.0.0 busy"
    assert entries["d@t"].next_attempt == pytest.approx(time.time() + 3600, abs=5)
    assert entries["a@t"].state == "active"
    assert entries["q@t"].state == "queued"
    assert queue.counts() == {"queued": 1, "deferred": 1, "active": 1, "total": 3}

    assert queue.retry(deferred) is True
    wait_until(lambda: len(relay.calls) == 3, what="retried now")
    assert queue.retry("nope") is False

    assert queue.remove(entries["q@t"].id) is True
    assert queue.remove(entries["q@t"].id) is False
    assert queue.counts()["total"] == 2
    gate.set()
    wait_until(lambda: not storage.env_db)


def test_removing_an_active_envelope_drops_its_outcome(queues):
    storage = DictStorage()
    gate = gevent.event.Event()

    def held(envelope):
        gate.wait()
        raise TransientRelayError("would retry")

    relay = ScriptedRelay(default=held)
    queue = start(queues, storage, relay, backoff=FAST)
    [(_, id_)] = queue.enqueue(make_envelope())
    gevent.sleep(0.01)
    assert queue.remove(id_) is True
    gate.set()
    gevent.sleep(0.05)
    assert len(relay.calls) == 1
    assert storage.env_db == {}


# -- the default back-off ---------------------------------------------------------------


def test_exponential_backoff_defaults_follow_postfix():
    backoff = ExponentialBackoff()
    env = make_envelope()
    env.timestamp = time.time()
    assert [backoff(env, n) for n in range(1, 8)] == [300, 600, 1200, 2400, 4000, 4000, 4000]
    assert backoff(env, 10_000) == 4000


def test_exponential_backoff_gives_up_after_five_days():
    backoff = ExponentialBackoff()
    env = make_envelope()
    env.timestamp = time.time() - 5 * 86400 + 60
    assert backoff(env, 30) == 4000
    env.timestamp = time.time() - 5 * 86400 - 1
    assert backoff(env, 30) is None


def test_exponential_backoff_estimates_age_without_a_timestamp():
    backoff = ExponentialBackoff()
    env = Envelope("a@t", ["b@t"])
    assert backoff(env, 1) == 300
    # 300+600+1200+2400 = 4500 s, then 4000 s per attempt: 5 days after ~108 attempts.
    assert backoff(env, 100) == 4000
    assert backoff(env, 120) is None


def test_queue_default_backoff_is_exponential():
    assert isinstance(Queue(DictStorage()).backoff, ExponentialBackoff)
