"""examples/tutorials/shared_queue.py: two nodes, one Redis queue, one Maildir."""

from __future__ import annotations

import smtplib
from pathlib import Path

import gevent
import pytest

from tests.integration.storage.redis_server import redis_server  # noqa: F401 - a fixture

from .conftest import free_port, wait_maildir, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def test_two_nodes_deliver_each_message_once(tutorial, redis_server, tmp_path: Path) -> None:  # noqa: F811
    import redis

    mail = tmp_path / "mail"
    ports = {}
    for name in ("node1", "node2"):
        ports[name] = free_port()
        tutorial(
            "shared_queue.py",
            "--listen", f"127.0.0.1:{ports[name]}", "--redis", redis_server.url(),
            "--prefix", "tutorial:", "--domain", "example.com",
            "--hostname", f"{name}.example.com", "--maildir", str(mail),
            ports=(ports[name],),
        )  # fmt: skip
    for i in range(6):
        name = "node1" if i % 2 == 0 else "node2"
        with smtplib.SMTP("127.0.0.1", ports[name], timeout=10) as client:
            message = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
            client.sendmail("sender@example.org", ["alice@example.com"], message)
    wait_maildir(mail, "alice", 6)
    gevent.sleep(0.5)  # room for a duplicate delivery to show up
    messages = wait_maildir(mail, "alice", 6)
    bodies = sorted(m.split(b"\n\n", 1)[1] for m in messages)
    assert bodies == [f"message {i}\n".encode() for i in range(6)]  # each once, none twice
    assert sum(b"by node1.example.com" in m for m in messages) == 3  # each node accepted three
    client = redis.Redis.from_url(redis_server.url())
    try:
        wait_until(lambda: not list(client.scan_iter("tutorial:msg:*")), 5, "an empty shared queue")
    finally:
        client.close()
