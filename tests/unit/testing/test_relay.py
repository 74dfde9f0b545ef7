"""RecordingRelay: records attempts, plays scripted outcomes, refuses bad scripts."""

from __future__ import annotations

import pytest

from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply
from slimta.testing import DELIVER, HelperTimeout, RecordingRelay, ScriptError, make_envelope


def test_delivers_by_default_and_records_each_attempt():
    relay = RecordingRelay()
    env = make_envelope(recipients=["a@t", "b@t"])
    assert relay.attempt(env, 0) is None
    assert relay.attempt(env, 3) is None
    assert [(a.recipients, a.attempts, a.outcome) for a in relay.attempts] == [
        (("a@t", "b@t"), 0, DELIVER),
        (("a@t", "b@t"), 3, DELIVER),
    ]
    assert relay.envelopes == [env, env]
    assert relay.attempts[0].sender == "sender@example.com"
    assert relay.delivered == ["a@t", "b@t", "a@t", "b@t"]


def test_whole_envelope_outcomes_in_order_then_the_default():
    relay = RecordingRelay(default=TransientRelayError("down"))
    relay.script(PermanentRelayError("no"), DELIVER, Reply("250", "2.0.0 Ok"))
    assert relay.pending == 3
    env = make_envelope()
    with pytest.raises(PermanentRelayError):
        relay.attempt(env, 0)
    assert relay.attempt(env, 1) is None
    assert relay.attempt(env, 2) == Reply("250", "2.0.0 Ok")
    with pytest.raises(TransientRelayError, match="down"):
        relay.attempt(env, 3)
    assert relay.pending == 0
    assert relay.delivered == ["rcpt@example.com", "rcpt@example.com"]


def test_per_recipient_outcomes_fill_in_the_default_for_others():
    relay = RecordingRelay()
    busy = TransientRelayError("busy")
    relay.script({"b@t": busy, "c@t": Reply("550", "5.1.1 Unknown")})
    result = relay.attempt(make_envelope(recipients=["a@t", "b@t", "c@t"]), 0)
    assert result == {"a@t": None, "b@t": busy, "c@t": Reply("550", "5.1.1 Unknown")}
    assert relay.attempts[0].outcome == {"a@t": DELIVER, "b@t": busy, "c@t": Reply("550", "5.1.1 Unknown")}
    assert relay.delivered == ["a@t"]


def test_an_outcome_for_a_recipient_not_in_the_envelope_is_a_clear_error():
    relay = RecordingRelay()
    relay.script({"nobody@t": DELIVER})
    with pytest.raises(ScriptError, match=r"recipient\(s\) \['nobody@t'\].*recipients \['a@t'\]"):
        relay.attempt(make_envelope(recipients=["a@t"]), 0)
    assert len(relay.attempts) == 1
    with pytest.raises(ScriptError):
        relay.check()


@pytest.mark.parametrize("bad", ["delivered", 250, ValueError("x"), {"a@t": "ok"}])
def test_scripting_something_that_is_not_an_outcome_fails_at_once(bad):
    relay = RecordingRelay()
    with pytest.raises(ScriptError, match="is not an outcome"):
        relay.script(bad)
    assert relay.pending == 0


def test_a_bad_default_is_refused():
    with pytest.raises(ScriptError, match="default"):
        RecordingRelay(default="yes")


def test_wait_for_times_out_with_a_message_saying_what_was_seen():
    relay = RecordingRelay()
    with pytest.raises(HelperTimeout, match=r"2 delivery attempt\(s\), got 0"):
        relay.wait_for(2, timeout=0.05)


def test_behind_a_queue_a_script_error_surfaces_in_wait_for():
    relay = RecordingRelay()
    relay.script({"ghost@t": DELIVER})
    queue = Queue(DictStorage(), relay, backoff=lambda env, n: None, bounce_factory=lambda e, r: None)
    queue.start()
    try:
        queue.enqueue(make_envelope(recipients=["a@t"]))
        with pytest.raises(ScriptError, match="ghost@t"):
            relay.wait_for(1)
    finally:
        queue.kill()


def test_behind_a_queue_per_recipient_results_are_honoured():
    relay = RecordingRelay()
    relay.script({"a@t": DELIVER, "b@t": PermanentRelayError("gone"), "c@t": TransientRelayError("busy")})
    bounces = []
    store = DictStorage()
    queue = Queue(
        store,
        relay,
        backoff=lambda env, n: 3600.0,
        bounce_factory=lambda env, reply: bounces.append((env.recipients, reply.code)),
    )
    queue.start()
    try:
        queue.enqueue(make_envelope(recipients=["a@t", "b@t", "c@t"]))
        relay.wait_for(1)
        [(id_, _)] = [(e.id, e) for e in store.inspect()]
        assert store.get(id_)[0].recipients == ["c@t"]
        assert bounces == [(["b@t"], "550")]
    finally:
        queue.kill()


def test_the_fixture_fails_the_test_on_a_script_error(recording_relay):
    recording_relay.script({"x@t": DELIVER})
    with pytest.raises(ScriptError):
        recording_relay.attempt(make_envelope(), 0)
    recording_relay.errors.clear()  # otherwise the fixture's teardown fails this test
