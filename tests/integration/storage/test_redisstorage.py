"""RedisStorage against a real redis-server: conformance, claims, leases, auth, TLS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import gevent
import pytest

from slimta.queue import QueueError
from slimta.redisstorage import RedisStorage, RedisStorageError
from tests.storage_conformance import StorageConformance, _envelope

from .redis_server import RedisServer, redis_server, redis_server_factory, tls_unsupported_reason  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


@pytest.fixture
def make(redis_server: RedisServer):  # noqa: F811 - the fixture imported above
    """``make(prefix=None, **kw)`` -> a RedisStorage on the module's server; closed after the test."""
    made: list[RedisStorage] = []

    def factory(prefix: str | None = None, **kwargs) -> RedisStorage:
        storage = RedisStorage(port=redis_server.port, prefix=prefix or f"t{uuid.uuid4().hex[:8]}:", **kwargs)
        made.append(storage)
        return storage

    yield factory
    for storage in made:
        storage.close()


class TestRedisStorageConformance(StorageConformance):
    wait_returns_none = False

    @pytest.fixture(autouse=True)
    def _server(self, make):
        self._make = make

    def make_storage(self):
        return self._make()

    def reopen_storage(self, storage):
        return self._make(storage.prefix)


# -- claims ----------------------------------------------------------------------


def test_only_one_node_may_claim_an_envelope(make):
    a = make()
    b = make(a.prefix)
    id_ = a.write(_envelope(), time.time())  # claimed by a, which attempts it now
    with pytest.raises(KeyError):
        b.get(id_)
    assert a.get(id_)[0].recipients == ["b@x.test", "c@y.test", "d@z.test"]
    assert b.peek(id_)[1] == 0  # reading without a claim is always allowed
    a.set_timestamp(id_, time.time())  # attempt over: the claim is given back
    assert b.get(id_)[0].sender == "alice@example.com"
    with pytest.raises(KeyError):
        a.get(id_)


def test_racing_claims_have_one_winner(make):
    first = make()
    nodes = [first] + [make(first.prefix) for _ in range(7)]
    ids = [first.write(_envelope(), 1.0) for _ in range(30)]
    for id_ in ids:
        first.set_timestamp(id_, 1.0)  # all due, none claimed
    winners: dict[str, list[int]] = {id_: [] for id_ in ids}

    def claim_all(n: int) -> None:
        for id_ in ids:
            try:
                nodes[n].get(id_)
            except KeyError:
                continue
            winners[id_].append(n)

    gevent.joinall([gevent.spawn(claim_all, n) for n in range(len(nodes))], raise_error=True)
    assert all(len(w) == 1 for w in winners.values())


def test_wait_claims_due_envelopes_in_batches(make):
    writer = make(claim_on_write=False)
    ids = {writer.write(_envelope(rcpts=(f"r{i}@t",)), time.time() - 1) for i in range(7)}
    later = writer.write(_envelope(), time.time() + 3600)
    node = make(writer.prefix, claim_batch=5)
    other = make(writer.prefix)
    first = node.wait()
    second = node.wait()
    claimed = [i for _, i in first + second]
    assert len(first) == 5
    assert sorted(claimed) == sorted(ids)
    assert later not in claimed
    for id_ in ids:
        with pytest.raises(KeyError):
            other.get(id_)
    assert node.get_info() == {"size": 8, "due": 1, "claimed": 7, "held": 7}


def test_wait_wakes_when_another_node_reschedules(make):
    idle = make()
    busy = make(idle.prefix)
    id_ = busy.write(_envelope(), time.time())
    waiter = gevent.spawn(idle.wait)
    gevent.sleep(0.2)
    assert not waiter.ready()
    started = time.monotonic()
    busy.set_timestamp(id_, time.time() + 0.3)  # failed attempt: retry in 0.3 s, anywhere
    assert waiter.get(timeout=5) == [(pytest.approx(time.time() + 0.3, abs=0.5), id_)]
    assert 0.2 < time.monotonic() - started < 2.0


def test_a_dead_nodes_claims_expire_and_are_taken_over(make):
    dead = make(lease_time=0.5)
    alive = make(dead.prefix, lease_time=0.5)
    id_ = dead.write(_envelope(), time.time())
    # The node dies mid-attempt: it stops renewing, nothing is given back.
    dead._renewer.kill()
    dead._held.clear()
    with pytest.raises(KeyError):
        alive.get(id_)
    started = time.monotonic()
    assert [i for _, i in alive.wait()] == [id_]
    assert 0.3 < time.monotonic() - started < 2.0
    assert alive.get(id_)[1] == 0


def test_leases_are_renewed_while_an_attempt_runs_long(make):
    holder = make(lease_time=0.4)
    other = make(holder.prefix, lease_time=0.4)
    id_ = holder.write(_envelope(), time.time())
    deadline = time.monotonic() + 1.5  # almost four lease times
    while time.monotonic() < deadline:
        with pytest.raises(KeyError):
            other.get(id_)
        gevent.sleep(0.1)
    holder.remove(id_)
    with pytest.raises(KeyError):
        other.get(id_)


def test_close_gives_claims_back_at_once(make):
    leaving = make()
    staying = make(leaving.prefix)
    id_ = leaving.write(_envelope(), 5.0)
    leaving.close()
    assert staying.wait() == [(5.0, id_)]


def test_load_lists_unclaimed_and_own_but_not_others_claims(make):
    a = make()
    b = make(a.prefix)
    mine = a.write(_envelope(), 10.0)
    theirs = b.write(_envelope(), 11.0)
    free = b.write(_envelope(), 12.0)
    b.set_timestamp(free, 13.0)
    assert sorted(a.load()) == [(10.0, mine), (13.0, free)]
    assert sorted(b.load()) == [(11.0, theirs), (13.0, free)]
    assert {e.id for e in a.inspect()} == {mine, theirs, free}


def test_updates_are_atomic_under_concurrency(make):
    a = make()
    b = make(a.prefix)
    id_ = a.write(_envelope(rcpts=tuple(f"r{i}@t" for i in range(40))), 1.0)
    jobs = [gevent.spawn((a if n % 2 else b).increment_attempts, id_) for n in range(50)]
    gevent.joinall(jobs, raise_error=True)
    assert a.peek(id_)[1] == 50
    # Forty deliveries reported one at a time, each "index 0 of what is left".
    jobs = [gevent.spawn((a if n % 2 else b).set_recipients_delivered, id_, [0]) for n in range(39)]
    gevent.joinall(jobs, raise_error=True)
    assert a.peek(id_)[0].recipients == ["r39@t"]


def test_unknown_ids_raise_key_error_and_create_nothing(make):
    storage = make()
    for call in (
        lambda: storage.increment_attempts("nope"),
        lambda: storage.set_timestamp("nope", 1.0),
        lambda: storage.set_recipients_delivered("nope", [0]),
        lambda: storage.peek("nope"),
    ):
        with pytest.raises(KeyError):
            call()
    storage.set_last_error("nope", "x")
    assert storage.redis.exists(f"{storage.prefix}msg:nope") == 0
    assert storage.get_info()["size"] == 0


def test_records_are_json_and_bytes_never_pickle(make):
    storage = make()
    env = _envelope()
    env.dsn = None  # an attribute that is not the DSN class is simply not stored
    id_ = storage.write(env, 1.0)
    record = storage.redis.hgetall(f"{storage.prefix}msg:{id_}")
    assert set(record) >= {b"v", b"meta", b"headers", b"body", b"ts", b"attempts", b"owner"}
    assert record[b"meta"].startswith(b"{")
    assert record[b"body"] == env.message
    # A damaged record is an error, never code execution or a crash of load().
    storage.redis.hset(f"{storage.prefix}msg:{id_}", "meta", b"\x80\x04cos\nsystem\n.")
    with pytest.raises(RedisStorageError):
        storage.get(id_)
    assert [i for _, i in storage.load()] == [id_]


def test_dsn_request_round_trips(make):
    from slimta.bounce.dsn import EnvelopeDsn, get_dsn, parse_mail_params, parse_rcpt_params, set_dsn

    storage = make()
    env = _envelope()
    set_dsn(env, parse_mail_params({"RET": "HDRS", "ENVID": "abc"}))
    dsn = get_dsn(env)
    assert dsn is not None
    dsn.recipients["b@x.test"] = parse_rcpt_params({"NOTIFY": "SUCCESS,FAILURE"})
    id_ = storage.write(env, 1.0)
    got = get_dsn(storage.get(id_)[0])
    assert isinstance(got, EnvelopeDsn)
    assert got.to_dict() == dsn.to_dict()


def test_requiretls_round_trips(make):
    from slimta.policy.requiretls import get_requiretls, set_requiretls

    storage = make()
    marked, plain = _envelope(), _envelope()
    set_requiretls(marked)
    assert get_requiretls(storage.get(storage.write(marked, 1.0))[0])
    assert not get_requiretls(storage.get(storage.write(plain, 1.0))[0])


def test_redis_down_is_a_queue_error(redis_server_factory):  # noqa: F811
    server = redis_server_factory()
    storage = RedisStorage(port=server.port, socket_timeout=2)
    storage.write(_envelope(), 1.0)
    server.stop()
    with pytest.raises(RedisStorageError) as info:
        storage.write(_envelope(), 1.0)
    assert isinstance(info.value, QueueError)
    storage.close()


# -- auth and TLS -------------------------------------------------------------------


def test_password_auth(redis_server_factory):  # noqa: F811
    server = redis_server_factory(password="s3cret pass")
    with pytest.raises(RedisStorageError):
        RedisStorage(port=server.port, password="wrong").write(_envelope(), 1.0)
    with pytest.raises(RedisStorageError):
        RedisStorage(port=server.port).write(_envelope(), 1.0)
    storage = RedisStorage(port=server.port, password="s3cret pass", db=2)
    id_ = storage.write(_envelope(), 1.0)
    by_url = RedisStorage(url=f"redis://:s3cret%20pass@127.0.0.1:{server.port}/2")
    assert by_url.peek(id_)[0].sender == "alice@example.com"
    storage.close()
    by_url.close()


def test_tls_with_a_rediss_url(redis_server_factory):  # noqa: F811
    reason = tls_unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    server = redis_server_factory(password="pw", tls=True)
    storage = RedisStorage(url=f"rediss://:pw@localhost:{server.port}/0", ssl_ca_certs=server.ca_file)
    id_ = storage.write(_envelope(), 1.0)
    assert storage.get(id_)[0].message == _envelope().message
    sock = storage.redis.connection_pool.get_connection()
    assert type(sock._sock).__module__.startswith("gevent")
    storage.redis.connection_pool.release(sock)
    storage.close()
    keywords = RedisStorage(
        "localhost", server.port, password="pw", ssl=True, ssl_ca_certs=server.ca_file, socket_timeout=5
    )
    assert keywords.peek(id_)[1] == 0
    keywords.close()
    # The certificate is checked: without the CA the handshake fails.
    untrusted = RedisStorage(url=f"rediss://:pw@localhost:{server.port}/0", socket_timeout=5)
    with pytest.raises(RedisStorageError):
        untrusted.peek(id_)
    # Plain TCP to the TLS port does not get through either.
    with pytest.raises(RedisStorageError):
        RedisStorage(port=server.port, password="pw", socket_timeout=2).peek(id_)


# -- the hub is never blocked, even without monkey-patching ----------------------


def test_unpatched_process_stays_cooperative(redis_server: RedisServer):  # noqa: F811
    """In a process that is not monkey-patched, a blocking wait() lets other greenlets run."""
    code = textwrap.dedent(
        f"""
        import time, gevent
        from slimta.redisstorage import RedisStorage
        ticks = []
        def tick():
            while True:
                ticks.append(time.monotonic())
                gevent.sleep(0.01)
        ticker = gevent.spawn(tick)
        storage = RedisStorage(port={redis_server.port}, prefix="unpatched:", lease_time=0.6)
        waiter = gevent.spawn(storage.wait)
        gevent.sleep(0.5)
        assert not waiter.ready()
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        print(len(ticks), max(gaps))
        """
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=15, check=True
    )
    count, max_gap = out.stdout.split()
    assert int(count) > 20
    assert float(max_gap) < 0.1
