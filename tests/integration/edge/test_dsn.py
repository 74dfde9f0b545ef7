"""RFC 3461 DSN requests: accepted by SmtpEdge, kept on the envelope, honoured by the Queue."""

from __future__ import annotations

import smtplib

import gevent
import pytest

from slimta.bounce.dsn import get_dsn, get_recipient_dsn
from slimta.envelope import Envelope
from slimta.queue import Queue
from slimta.queue.dict import DictStorage
from slimta.relay import PermanentRelayError, Relay
from slimta.smtp.reply import Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MESSAGE = b"From: a@src.test\r\nSubject: dsn\r\n\r\nbody\r\n"


def _send(edge, mail_options, rcpts):
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        code, _ = client.mail("sender@src.test", mail_options)
        assert code == 250
        for rcpt, options in rcpts:
            code, msg = client.rcpt(rcpt, options)
            if code != 250:
                return code, msg
        code, msg = client.data(MESSAGE)
        return code, msg


def test_dsn_parameters_are_kept_with_the_envelope(edge):
    code, _ = _send(
        edge,
        ["RET=HDRS", "ENVID=QQ314159"],
        [
            ("never@dst.test", ["NOTIFY=NEVER"]),
            ("all@dst.test", ["NOTIFY=SUCCESS,FAILURE,DELAY", "ORCPT=rfc822;Orig@dst.test"]),
            ("plain@dst.test", []),
        ],
    )
    assert code == 250
    [env] = edge.queue.envelopes
    dsn = get_dsn(env)
    assert dsn is not None
    assert (dsn.ret, dsn.envid) == ("HDRS", "QQ314159")
    never = get_recipient_dsn(env, "never@dst.test")
    assert never is not None
    assert never.notify == frozenset({"NEVER"})
    every = get_recipient_dsn(env, "all@dst.test")
    assert every is not None
    assert every.notify == frozenset({"SUCCESS", "FAILURE", "DELAY"})
    assert every.orcpt == ("rfc822", "Orig@dst.test")
    assert get_recipient_dsn(env, "plain@dst.test") is None


@pytest.mark.parametrize(
    ("mail_options", "rcpt_options"),
    [
        (["RET=SOMETIMES"], []),
        ([], ["NOTIFY=NEVER,FAILURE"]),
        ([], ["NOTIFY=BOGUS"]),
    ],
)
def test_malformed_dsn_parameters_get_501(edge, mail_options, rcpt_options):
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        code, msg = client.mail("sender@src.test", mail_options)
        if code == 250:
            code, msg = client.rcpt("r@dst.test", rcpt_options)
        assert code == 501
        assert msg.startswith(b"5.5.4")
    assert not edge.queue.envelopes


class _Refuse(Relay):
    def attempt(self, envelope: Envelope, attempts: int) -> None:
        raise PermanentRelayError("no such user", Reply("550", "5.1.1 No such user"))


def test_notify_never_suppresses_the_bounce(edge_factory):
    bounces: list[Envelope] = []

    def bounce_factory(envelope: Envelope, reply: Reply) -> Envelope:
        bounces.append(envelope)
        return Envelope("", [envelope.sender])

    queue = Queue(DictStorage(), _Refuse(), bounce_factory=bounce_factory, bounce_queue=_Sink())
    queue.start()
    try:
        edge = edge_factory(queue=queue)
        code, _ = _send(
            edge,
            [],
            [("never@dst.test", ["NOTIFY=NEVER"]), ("told@dst.test", ["NOTIFY=FAILURE"]), ("plain@dst.test", [])],
        )
        assert code == 250
        with gevent.Timeout(5):
            while not bounces or queue.counts().get("total", 1):
                gevent.sleep(0.02)
    finally:
        queue.kill()
    assert len(bounces) == 1
    assert sorted(bounces[0].recipients) == ["plain@dst.test", "told@dst.test"]


class _Sink:
    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str]]:
        return [(envelope, "bounce-id")]
