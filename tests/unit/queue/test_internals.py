"""The pure pieces of the queue: outcome classification and the timetable."""

from __future__ import annotations

from slimta.queue._outcome import classify, group_by_reply
from slimta.queue._schedule import Schedule
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply

RCPTS = ["a@t", "b@t", "c@t"]


def test_whole_envelope_results():
    for ok in (None, Reply("250", "2.0.0 Ok")):
        assert classify(ok, RCPTS).delivered == [0, 1, 2]
    perm = classify(PermanentRelayError("no"), RCPTS)
    assert [i for i, _ in perm.permanent] == [0, 1, 2]
    temp = classify(TransientRelayError("later"), RCPTS)
    assert [i for i, _ in temp.transient] == [0, 1, 2]
    assert temp.transient[0][1].code == "450"


def test_returned_error_replies_count_by_code():
    out = classify(
        {"a@t": Reply("550", "5.1.1 no"), "b@t": Reply("421", "4.4.2 bye"), "c@t": Reply("354", "x")}, RCPTS
    )
    assert [i for i, _ in out.permanent] == [0]
    assert [i for i, _ in out.transient] == [1, 2]


def test_garbage_and_missing_results_are_transient():
    out = classify({"a@t": None}, RCPTS)
    assert out.delivered == [0]
    assert [i for i, _ in out.transient] == [1, 2]
    assert all(r.message.startswith("4.0.0") for _, r in out.transient)
    assert [i for i, _ in classify("oops", RCPTS).transient] == [0, 1, 2]
    assert [i for i, _ in classify([None], RCPTS).transient] == [1, 2]


def test_error_with_broken_reply_gets_a_default_one():
    err = PermanentRelayError("x")
    err.reply = "not a reply"
    [(_, reply)] = classify(err, ["a@t"]).permanent
    assert reply.code == "550"


def test_group_by_reply_keeps_first_seen_order():
    r1, r2 = Reply("550", "5.1.1 a"), Reply("552", "5.2.2 b")
    groups = group_by_reply([(0, r1), (1, r2), (2, Reply("550", "5.1.1 a"))])
    assert [(r.code, idx) for r, idx in groups] == [("550", [0, 2]), ("552", [1])]


def test_schedule_orders_by_time_and_skips_stale_entries():
    s = Schedule()
    s.add("a", 5.0)
    s.add("b", 1.0)
    s.add("c", 3.0)
    s.add("b", 9.0)  # rescheduled later
    assert s.discard("c") is True
    assert s.discard("c") is False
    assert s.next_time() == 5.0
    assert s.pop_due(4.0) is None
    assert s.pop_due(10.0) == "a"
    assert s.pop_due(10.0) == "b"
    assert s.pop_due(10.0) is None
    assert len(s) == 0


def test_schedule_flush_makes_all_due():
    s = Schedule()
    s.add("x", 100.0)
    s.add("y", 50.0)
    s.flush(1.0)
    assert s.when("x") == 1.0
    assert [s.pop_due(1.0), s.pop_due(1.0)] == ["y", "x"]
