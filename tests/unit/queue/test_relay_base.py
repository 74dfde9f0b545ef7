"""slimta.relay errors and base class, BlackholeRelay, RelayPool, ProxyQueue."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import AsyncResult

from slimta.core import SlimtaError
from slimta.queue.proxy import ProxyQueue
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.relay.blackhole import BlackholeRelay
from slimta.relay.pool import RelayPool, RelayPoolClient
from slimta.smtp.reply import Reply

from .helpers import ScriptedRelay, make_envelope, wait_until


def test_relay_errors_default_replies():
    perm = PermanentRelayError("no such user")
    temp = TransientRelayError("try later")
    assert isinstance(perm, SlimtaError)
    assert isinstance(perm, RelayError)
    assert (perm.reply.code, perm.reply.message) == ("550", "5.0.0 no such user")
    assert (temp.reply.code, temp.reply.message) == ("450", "4.0.0 try later")
    assert str(perm) == "no such user"


def test_relay_error_keeps_given_reply():
    reply = Reply("554", "5.7.1 Denied")
    assert PermanentRelayError("x", reply).reply is reply


def test_relay_attempt_is_abstract():
    with pytest.raises(NotImplementedError):
        Relay().attempt(make_envelope(), 0)
    Relay().kill()


def test_relay_policies_run_before_attempt():
    class Tag:
        def apply(self, envelope):
            envelope.prepend_header("X-Tag", "yes")

    relay = ScriptedRelay(default=lambda env: env.headers["X-Tag"])
    relay.add_policy(Tag())
    assert relay._attempt(make_envelope(), 0) == "yes"
    with pytest.raises(TypeError):
        relay.add_policy("not a policy")


def test_relay_policy_error_fails_the_attempt():
    class Deny:
        def apply(self, envelope):
            raise PermanentRelayError("policy says no")

    relay = ScriptedRelay()
    relay.add_policy(Deny())
    with pytest.raises(PermanentRelayError):
        relay._attempt(make_envelope(), 0)
    assert relay.calls == []


def test_blackhole_accepts_everything_and_skips_policies():
    class Boom:
        def apply(self, envelope):
            raise AssertionError("must not run")

    relay = BlackholeRelay()
    relay.add_policy(Boom())
    reply = relay._attempt(make_envelope(), 0)
    assert reply.code == "250"
    assert reply.message.startswith("2.0.0 Message Delivered; ")


# -- RelayPool --------------------------------------------------------------------


class EchoClient(RelayPoolClient):
    served: list[str]

    def __init__(self, queue, idle_timeout=None, hold=0.0, die=False):
        super().__init__(queue, idle_timeout)
        self.hold = hold
        self.die = die
        self.served = []

    def _run(self):
        while True:
            result, envelope = self.poll()
            if result is None:
                return
            gevent.sleep(self.hold)
            if self.die:
                raise RuntimeError("client crashed")
            if envelope.recipients == ["fail@t"]:
                result.set_exception(PermanentRelayError("refused"))
            else:
                self.served.append(envelope.recipients[0])
                result.set(Reply("250", "2.0.0 Ok"))


class EchoPool(RelayPool):
    def __init__(self, pool_size=None, **client_kw):
        super().__init__(pool_size)
        self.client_kw = client_kw
        self.made: list[EchoClient] = []

    def add_client(self):
        client = EchoClient(None, **self.client_kw)
        self.made.append(client)
        return client


def test_pool_delivers_and_reports_errors():
    pool = EchoPool(idle_timeout=0.05)
    assert pool.attempt(make_envelope(rcpts=["a@t"]), 0).code == "250"
    with pytest.raises(PermanentRelayError):
        pool.attempt(make_envelope(rcpts=["fail@t"]), 0)
    pool.kill()


def test_pool_size_bounds_clients_and_reuses_them():
    pool = EchoPool(pool_size=2, idle_timeout=0.2, hold=0.01)
    jobs = [gevent.spawn(pool.attempt, make_envelope(rcpts=[f"r{i}@t"]), 0) for i in range(10)]
    gevent.joinall(jobs, raise_error=True)
    assert len(pool.made) == 2
    assert sorted(r for c in pool.made for r in c.served) == sorted(f"r{i}@t" for i in range(10))
    pool.kill()


def test_idle_clients_end_after_idle_timeout():
    pool = EchoPool(idle_timeout=0.02)
    pool.attempt(make_envelope(), 0)
    assert len(pool.pool) == 1
    wait_until(lambda: not pool.pool, what="idle client to end")


def test_client_dying_mid_delivery_fails_the_request():
    pool = EchoPool(die=True)
    with pytest.raises(TransientRelayError), gevent.Timeout(2):
        pool.attempt(make_envelope(), 0)


def test_interrupted_attempt_withdraws_its_request():
    pool = EchoPool(pool_size=1, idle_timeout=0.5, hold=0.05)
    first = gevent.spawn(pool.attempt, make_envelope(rcpts=["first@t"]), 0)
    gevent.sleep(0.005)
    with pytest.raises(gevent.Timeout), gevent.Timeout(0.01):
        pool.attempt(make_envelope(rcpts=["late@t"]), 0)
    first.get(timeout=2)
    gevent.sleep(0.1)
    assert pool.made[0].served == ["first@t"]
    pool.kill()


def test_poll_returns_none_pair_on_idle_timeout():
    from slimta.util.deque import BlockingDeque

    client = EchoClient(BlockingDeque(), idle_timeout=0.01)
    assert client.poll() == (None, None)
    queue = BlockingDeque()
    result = AsyncResult()
    queue.append((result, "env"))
    assert EchoClient(queue, idle_timeout=0.01).poll() == (result, "env")


# -- ProxyQueue -------------------------------------------------------------------


def test_proxy_queue_delivers_synchronously():
    relay = ScriptedRelay()
    proxy = ProxyQueue(relay)
    proxy.start()
    proxy.flush()
    env = make_envelope()
    [(got, id_)] = proxy.enqueue(env)
    assert got is env
    assert isinstance(id_, str)
    assert len(id_) == 32
    assert len(relay.calls) == 1


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (PermanentRelayError("no"), PermanentRelayError),
        (TransientRelayError("later"), TransientRelayError),
        (RuntimeError("bug"), TransientRelayError),
        ({"a@t": None, "b@t": PermanentRelayError("no")}, PermanentRelayError),
        ({"a@t": PermanentRelayError("no"), "b@t": TransientRelayError("l")}, TransientRelayError),
        (object(), TransientRelayError),
    ],
)
def test_proxy_queue_reports_failures(outcome, expected):
    proxy = ProxyQueue(ScriptedRelay([outcome]))
    [(_, result)] = proxy.enqueue(make_envelope(rcpts=["a@t", "b@t"]))
    assert type(result) is expected
    assert result.reply.code[0] == ("5" if expected is PermanentRelayError else "4")


def test_proxy_queue_has_no_policies():
    with pytest.raises(NotImplementedError):
        ProxyQueue(BlackholeRelay()).add_policy(object())
