"""DBAPI2Lookup and SQLite3Lookup against real SQLite files."""

from __future__ import annotations

import contextlib
import sqlite3
import time

import gevent
import gevent.monkey
import pytest
from passlib.hash import sha512_crypt

from slimta.lookup import LookupBackendError
from slimta.lookup.drivers.dbapi2 import DBAPI2Lookup, SQLite3Lookup
from slimta.smtp.auth import AuthCredentials

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

_real_sleep = gevent.monkey.get_original("time", "sleep")


@pytest.fixture
def database(tmp_path):
    path = str(tmp_path / "lookup.db")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            """
            CREATE TABLE users (name TEXT PRIMARY KEY, secret TEXT, quota INTEGER);
            CREATE TABLE aliases (address TEXT PRIMARY KEY, alias TEXT);
            """
        )
        conn.execute(
            "INSERT INTO users VALUES (?, ?, ?)",
            ("alice", sha512_crypt.using(rounds=5000).hash("correct horse"), 10),
        )
        conn.execute("INSERT INTO users VALUES (?, ?, ?)", ("bob", "plain-secret", 0))
        conn.execute("INSERT INTO aliases VALUES (?, ?)", ("info@example.com", "alice@example.com"))
        conn.commit()
    return path


@pytest.fixture
def sqlite_lookup(database):
    made = []

    def make(query):
        lookup = SQLite3Lookup(database, query)
        made.append(lookup)
        return lookup

    yield make
    for lookup in made:
        lookup.close()


def test_sqlite_named_parameters(sqlite_lookup):
    lookup = sqlite_lookup("SELECT alias FROM aliases WHERE address = :address")
    assert lookup.lookup_address("info@example.com") == {"alias": "alice@example.com"}
    assert lookup.lookup_address("nobody@example.com") is None


def test_sqlite_sees_new_rows(database, sqlite_lookup):
    lookup = sqlite_lookup("SELECT alias FROM aliases WHERE address = :address")
    assert lookup.lookup(address="new@example.com") is None
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("INSERT INTO aliases VALUES ('new@example.com', 'x@y.test')")
        conn.commit()
    assert lookup.lookup(address="new@example.com") == {"alias": "x@y.test"}


def _creds(mechanism, user, password):
    creds = AuthCredentials(mechanism, user, password=password)
    # As the SMTP server does: the (slow) hash check runs in the thread pool.
    creds.offload = lambda func, *args: gevent.get_hub().threadpool.apply(func, args)
    return creds


def test_passlib_hash_from_sqlite_checks_credentials(sqlite_lookup):
    users = sqlite_lookup("SELECT secret, quota FROM users WHERE name = :name")
    record = users.lookup(name="alice")
    assert record["quota"] == 10
    assert record["secret"].startswith("$6$")
    assert _creds("PLAIN", "alice", "correct horse").check_secret(record["secret"])
    assert not _creds("PLAIN", "alice", "wrong").check_secret(record["secret"])
    plain = users.lookup(name="bob")["secret"]
    assert _creds("LOGIN", "bob", "plain-secret").check_secret(plain)
    assert users.lookup(name="mallory") is None


def test_sql_error_is_a_backend_error(sqlite_lookup):
    lookup = sqlite_lookup("SELECT nope FROM missing_table WHERE x = :x")
    with pytest.raises(LookupBackendError) as info:
        lookup.lookup(x=1)
    assert isinstance(info.value.__cause__, sqlite3.Error)


def test_generic_context_manager_positional_params(database):
    opened = []

    @contextlib.contextmanager
    def connection():
        conn = sqlite3.connect(database, check_same_thread=False)
        opened.append(conn)
        try:
            yield conn
        finally:
            conn.close()

    lookup = DBAPI2Lookup(
        connection,
        "SELECT name, quota FROM users WHERE name = ? AND quota >= ?",
        query_param_order=["name", "min_quota"],
    )
    # Plain tuples as rows: the column names come from cursor.description.
    assert lookup.lookup(name="alice", min_quota=5) == {"name": "alice", "quota": 10}
    assert lookup.lookup(name="alice", min_quota=50) is None
    assert len(opened) == 2
    with pytest.raises(LookupBackendError):
        lookup.lookup(name="alice")  # min_quota missing


def test_result_order_and_row_factory(database):
    conn = sqlite3.connect(database, check_same_thread=False)
    try:
        renamed = DBAPI2Lookup(
            None, "SELECT name, quota FROM users WHERE name = :n", result_order=["who", "q"], conn=conn
        )
        assert renamed.lookup(n="bob") == {"who": "bob", "q": 0}
        conn.row_factory = sqlite3.Row  # rows with keys()
        keyed = DBAPI2Lookup(None, "SELECT name, quota FROM users WHERE name = :n", conn=conn)
        assert keyed.lookup(n="bob") == {"name": "bob", "quota": 0}
    finally:
        conn.close()


def test_slow_query_does_not_block_the_hub(sqlite_lookup):
    """A query that takes 1 s runs in the thread pool: other greenlets keep running."""
    lookup = sqlite_lookup("SELECT slow(name) AS name FROM users WHERE name = :name")

    def slow(value):
        _real_sleep(1.0)
        return value

    lookup.conn.create_function("slow", 1, slow)
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.05)

    tick = gevent.spawn(ticker)
    try:
        started = time.monotonic()
        jobs = [gevent.spawn(lookup.lookup, name="alice") for _ in range(2)]
        gevent.joinall(jobs, raise_error=True, timeout=10)
        # One shared connection: the two queries take turns.
        assert time.monotonic() - started >= 2.0
    finally:
        tick.kill()
    assert [job.value for job in jobs] == [{"name": "alice"}] * 2
    assert len(ticks) >= 20


def test_threadpool_off_runs_inline(database):
    conn = sqlite3.connect(database)
    try:
        lookup = DBAPI2Lookup(
            None, "SELECT alias FROM aliases WHERE address = :address", conn=conn, threadpool=False
        )
        assert lookup.lookup(address="info@example.com") == {"alias": "alice@example.com"}
    finally:
        conn.close()


def test_needs_a_connection_source():
    with pytest.raises(ValueError, match="conn"):
        DBAPI2Lookup(None, "SELECT 1")
