"""RedisLookup against a real redis-server."""

from __future__ import annotations

import json

import gevent
import pytest
import redis

from slimta.envelope import Envelope
from slimta.lookup import LookupBackendError
from slimta.lookup.drivers.redis import RedisLookup
from slimta.lookup.policy import LookupPolicy
from tests.integration.storage.redis_server import free_port, redis_server, redis_server_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


@pytest.fixture
def client(redis_server):  # noqa: F811
    conn = redis.Redis(port=redis_server.port, db=1)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def make_lookup(redis_server):  # noqa: F811
    made = []

    def make(template, **kwargs):
        kwargs.setdefault("port", redis_server.port)
        kwargs.setdefault("db", 1)
        lookup = RedisLookup(template, **kwargs)
        made.append(lookup)
        return lookup

    yield make
    for lookup in made:
        lookup.close()


def test_json_records(client, make_lookup):
    client.set("alias:alice@example.com", json.dumps({"alias": "alice@mailbox.test", "quota": [1, 2]}))
    lookup = make_lookup("alias:{address}")
    assert lookup.lookup_address("alice@example.com") == {"alias": "alice@mailbox.test", "quota": [1, 2]}
    assert lookup.lookup_address("bob@example.com") is None


def test_hash_records(client, make_lookup):
    client.hset("domain:example.com", mapping={"relay": "mx1.test", "ünicode": "wert"})
    lookup = make_lookup("domain:{domain}", use_hash=True)
    assert lookup.lookup_address("x@example.com") == {"relay": "mx1.test", "ünicode": "wert"}
    assert lookup.lookup_address("x@other.test") is None


def test_db_number_is_honoured(client, make_lookup):
    client.set("k", json.dumps({"db": 1}))
    assert make_lookup("k", db=1).lookup() == {"db": 1}
    assert make_lookup("k", db=2).lookup() is None


def test_invalid_json_is_a_backend_error(client, make_lookup):
    client.set("bad", b"{not json")
    with pytest.raises(LookupBackendError) as info:
        make_lookup("bad").lookup()
    assert isinstance(info.value.__cause__, ValueError)


def test_server_down_is_a_backend_error(make_lookup):
    lookup = make_lookup("k", port=free_port(), socket_timeout=1.0)
    with pytest.raises(LookupBackendError) as info:
        lookup.lookup()
    assert isinstance(info.value.__cause__, redis.ConnectionError)


def test_password(redis_server_factory):  # noqa: F811
    server = redis_server_factory(password="s3cret")
    with redis.Redis(port=server.port, password="s3cret") as admin:
        admin.set("user:alice", json.dumps({"secret": "x"}))
    good = RedisLookup("user:{name}", port=server.port, password="s3cret")
    bad = RedisLookup("user:{name}", port=server.port, password="wrong")
    try:
        assert good.lookup(name="alice") == {"secret": "x"}
        with pytest.raises(LookupBackendError):
            bad.lookup(name="alice")
    finally:
        good.close()
        bad.close()


def test_concurrent_lookups_share_the_hub(client, make_lookup):
    for i in range(50):
        client.set(f"n:{i}", json.dumps({"i": i}))
    lookup = make_lookup("n:{i}", socket_timeout=5)
    jobs = [gevent.spawn(lookup.lookup, i=i) for i in range(50)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert [job.value for job in jobs] == [{"i": i} for i in range(50)]


def test_policy_on_redis_records(client, make_lookup):
    client.set("r:dst.test", json.dumps({"alias": "new.test", "add_headers": json.dumps({"X-Routed": "1"})}))
    env = Envelope("s@src.test", ["a@dst.test", "b@else.test"])
    env.parse(b"Subject: x\r\n\r\nbody\r\n")
    LookupPolicy(make_lookup("r:{domain}")).apply(env)
    assert env.recipients == ["a@new.test", "b@else.test"]
    assert env.headers is not None
    assert env.headers["X-Routed"] == "1"
