"""HttpRelay -> WsgiEdge end to end over 127.0.0.1, plain HTTP and HTTPS."""

from __future__ import annotations

import socket
from typing import Any

import gevent
import pytest

from slimta.edge.wsgi import WsgiEdge, WsgiResponse, WsgiValidators
from slimta.queue import QueueError
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.smtp.reply import Reply

from .conftest import HOSTNAME, PortRecorder, RecordingQueue, make_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


def test_delivers_envelope_and_message(edge, relay_factory) -> None:
    relay = relay_factory(edge.url())
    body = b"line one\r\n.leading dot\r\n\r\nlast line\r\n"
    envelope = make_envelope("s@example.com", ("a@example.com", "b@example.org"), body=body)
    reply = relay.attempt(envelope, 0)
    assert reply.code == "250"
    assert reply.message.startswith("2.6.0 Message accepted for delivery")
    [got] = edge.queue.envelopes
    assert got.sender == "s@example.com"
    assert got.recipients == ["a@example.com", "b@example.org"]
    assert got.flatten() == envelope.flatten()
    assert got.receiver == HOSTNAME
    assert got.client["ip"] == "127.0.0.1"
    assert got.client["name"] == "client.http.test"
    assert got.client["protocol"] == "HTTP"


def test_utf8_addresses_and_null_sender(edge, relay_factory) -> None:
    relay = relay_factory(edge.url())
    relay.attempt(make_envelope("", ("jürgen@bücher.example", "用户@例子.广告")), 0)
    [got] = edge.queue.envelopes
    assert got.sender == ""
    assert got.recipients == ["jürgen@bücher.example", "用户@例子.广告"]


def test_ehlo_as_callable_is_called_per_connection(edge, relay_factory) -> None:
    calls: list[int] = []

    def ehlo() -> str:
        calls.append(1)
        return "dynamic.example"

    relay = relay_factory(edge.url(), ehlo_as=ehlo, idle_timeout=5)
    relay.attempt(make_envelope(), 0)
    relay.attempt(make_envelope(), 0)
    assert [e.client["name"] for e in edge.queue.envelopes] == ["dynamic.example"] * 2
    assert len(calls) == 1


def test_keep_alive_reuses_one_connection(edge_factory, relay_factory) -> None:
    PortRecorder.ports = []
    edge = edge_factory(validator_class=PortRecorder)
    relay = relay_factory(edge.url(), pool_size=1, idle_timeout=5)
    for i in range(20):
        relay.attempt(make_envelope(subject=f"n{i}"), 0)
    assert len(edge.queue.envelopes) == 20
    assert len(set(PortRecorder.ports)) == 1


def test_without_idle_timeout_each_message_has_its_own_connection(edge_factory, relay_factory) -> None:
    PortRecorder.ports = []
    edge = edge_factory(validator_class=PortRecorder)
    relay = relay_factory(edge.url(), pool_size=1)
    for _ in range(3):
        relay.attempt(make_envelope(), 0)
    assert len(set(PortRecorder.ports)) == 3


def test_concurrent_attempts_share_a_bounded_pool(edge_factory, relay_factory) -> None:
    PortRecorder.ports = []
    edge = edge_factory(validator_class=PortRecorder)
    relay = relay_factory(edge.url(), pool_size=8, idle_timeout=5)
    jobs = [gevent.spawn(relay.attempt, make_envelope(subject=f"c{i}"), 0) for i in range(100)]
    gevent.joinall(jobs, timeout=8, raise_error=True)
    assert all(job.successful() for job in jobs)
    subjects = sorted(e.headers["Subject"] for e in edge.queue.envelopes)
    assert subjects == sorted(f"c{i}" for i in range(100))
    assert 1 <= len(set(PortRecorder.ports)) <= 8


def test_stale_keep_alive_connection_is_replaced(edge_factory, relay_factory) -> None:
    class QuickEdge(WsgiEdge):
        socket_timeout = 0.3

    edge = edge_factory(edge_class=QuickEdge)
    relay = relay_factory(edge.url(), pool_size=1, idle_timeout=5)
    relay.attempt(make_envelope(subject="first"), 0)
    gevent.sleep(0.8)  # the edge closes the idle connection meanwhile
    relay.attempt(make_envelope(subject="second"), 0)
    assert [e.headers["Subject"] for e in edge.queue.envelopes] == ["first", "second"]


# -- failures reported by the edge ---------------------------------------------------


def test_queue_error_is_transient(edge_factory, relay_factory) -> None:
    edge = edge_factory(queue=RecordingQueue(error=QueueError("disk full")))
    relay = relay_factory(edge.url())
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.code == "451"
    assert info.value.reply.message == "4.3.0 Error queuing message"


def test_queue_error_reply_is_passed_on(edge_factory, relay_factory) -> None:
    error = QueueError("no", reply=Reply("554", '5.7.1 Refused by "policy" \\ here'))
    edge = edge_factory(queue=RecordingQueue(error=error))
    relay = relay_factory(edge.url())
    with pytest.raises(PermanentRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.code == "554"
    assert info.value.reply.message == '5.7.1 Refused by "policy" \\ here'


def test_queue_crash_is_transient(edge_factory, relay_factory) -> None:
    edge = edge_factory(queue=RecordingQueue(crash=True))
    relay = relay_factory(edge.url())
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.code == "451"


def test_validators_refuse_with_a_response(edge_factory, relay_factory) -> None:
    seen: list[tuple[str, Any]] = []

    class Validators(WsgiValidators):
        custom_headers = ("X-Api-Key", "X-Missing")

        def validate_sender(self, sender: str) -> None:
            seen.append(("sender", sender))

        def validate_recipient(self, recipient: str) -> None:
            seen.append(("rcpt", recipient))
            if recipient.startswith("blocked"):
                raise WsgiResponse("403 Forbidden")

        def validate_custom(self, name: str, value: str | None) -> None:
            seen.append((name, value))

    edge = edge_factory(validator_class=Validators)
    relay = relay_factory(edge.url())
    relay.attempt(make_envelope("s@example.com", ("ok@example.com",)), 0)
    assert seen == [
        ("sender", "s@example.com"),
        ("rcpt", "ok@example.com"),
        ("X-Api-Key", None),
        ("X-Missing", None),
    ]
    with pytest.raises(PermanentRelayError) as info:
        relay.attempt(make_envelope(recipients=("blocked@example.com",)), 0)
    assert info.value.reply.code == "554"
    assert info.value.reply.message == "5.7.1 HTTP 403 Forbidden"
    assert len(edge.queue.envelopes) == 1


def test_uri_pattern_mismatch_is_permanent(edge_factory, relay_factory) -> None:
    edge = edge_factory(uri_pattern=r"/mail/\Z")
    relay = relay_factory(edge.url(path="/mail/"))
    relay.attempt(make_envelope(), 0)
    wrong = relay_factory(edge.url(path="/other/"))
    with pytest.raises(PermanentRelayError) as info:
        wrong.attempt(make_envelope(), 0)
    assert info.value.reply.message == "5.3.5 HTTP 404 Not Found"
    assert len(edge.queue.envelopes) == 1


def test_message_over_max_size_is_permanent(edge_factory, relay_factory) -> None:
    edge = edge_factory(max_size=2000)
    relay = relay_factory(edge.url(), idle_timeout=5)
    relay.attempt(make_envelope(body=b"x" * 1000 + b"\r\n"), 0)
    with pytest.raises(PermanentRelayError) as info:
        relay.attempt(make_envelope(body=b"y" * 3000 + b"\r\n"), 0)
    assert info.value.reply.code == "552"
    assert info.value.reply.message.startswith("5.3.4 ")
    assert len(edge.queue.envelopes) == 1


# -- failures of the connection ---------------------------------------------------------


def test_connection_refused_is_transient(relay_factory) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    relay = relay_factory(f"http://127.0.0.1:{port}/")
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.message.startswith("4.4.1 ")


def test_server_that_never_answers_times_out(scripted, relay_factory) -> None:
    server = scripted(None)
    relay = relay_factory(server.url, timeout=0.5)
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.message.startswith("4.4.2 ")
    assert server.requests == 1


@pytest.mark.parametrize(
    ("status", "error", "reply"),
    [
        ("400 Bad Request", PermanentRelayError, "554 5.0.0 HTTP 400 Bad Request"),
        ("404 Not Found", PermanentRelayError, "554 5.3.5 HTTP 404 Not Found"),
        ("413 Payload Too Large", PermanentRelayError, "552 5.3.4 HTTP 413 Payload Too Large"),
        ("408 Request Timeout", TransientRelayError, "451 4.4.2 HTTP 408 Request Timeout"),
        ("429 Too Many Requests", TransientRelayError, "451 4.7.0 HTTP 429 Too Many Requests"),
        ("500 Internal Server Error", TransientRelayError, "451 4.3.0 HTTP 500 Internal Server Error"),
        ("503 Service Unavailable", TransientRelayError, "451 4.3.0 HTTP 503 Service Unavailable"),
        ("302 Found", TransientRelayError, "451 4.3.0 HTTP 302 Found"),
    ],
)
def test_status_without_smtp_reply(scripted, relay_factory, status, error, reply) -> None:
    server = scripted(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
    relay = relay_factory(server.url)
    with pytest.raises(error) as info:
        relay.attempt(make_envelope(), 0)
    assert str(info.value.reply) == reply


@pytest.mark.parametrize(
    ("header", "error", "code", "message"),
    [
        ('550; message="5.1.1 No such user"', PermanentRelayError, "550", "5.1.1 No such user"),
        ('450; message="4.2.1 Try \\"later\\""', TransientRelayError, "450", '4.2.1 Try "later"'),
        ('552;message="5.3.4 big"; command="DATA"', PermanentRelayError, "552", "5.3.4 big"),
    ],
)
def test_smtp_reply_header_decides(scripted, relay_factory, header, error, code, message) -> None:
    # The status says "error"; the reply header's class says which kind.
    server = scripted(f"HTTP/1.1 500 Oops\r\nX-Smtp-Reply: {header}\r\nContent-Length: 0\r\n\r\n".encode())
    relay = relay_factory(server.url)
    with pytest.raises(error) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.code == code
    assert info.value.reply.message == message


def test_success_without_smtp_reply_returns_none(scripted, relay_factory) -> None:
    server = scripted(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    relay = relay_factory(server.url, idle_timeout=5, pool_size=1)
    assert relay.attempt(make_envelope(), 0) is None
    assert relay.attempt(make_envelope(), 0) is None
    assert server.requests == 2


# -- HTTPS ------------------------------------------------------------------------


@pytest.mark.parametrize("server_ctx", ["stdlib_server_context", "gevent_server_context"])
@pytest.mark.parametrize("client_ctx", ["client_context", "stdlib_client_context"])
def test_https_end_to_end(request, edge_factory, relay_factory, server_ctx, client_ctx) -> None:
    edge = edge_factory(context=request.getfixturevalue(server_ctx))
    relay = relay_factory(
        edge.url("https").replace("127.0.0.1", "localhost"),
        context=request.getfixturevalue(client_ctx),
        idle_timeout=5,
        pool_size=4,
    )
    jobs = [gevent.spawn(relay.attempt, make_envelope(subject=f"t{i}"), 0) for i in range(12)]
    gevent.joinall(jobs, timeout=8, raise_error=True)
    assert len(edge.queue.envelopes) == 12
    assert {e.client["protocol"] for e in edge.queue.envelopes} == {"HTTPS"}


def test_https_refuses_untrusted_certificate(edge_factory, relay_factory, stdlib_server_context) -> None:
    edge = edge_factory(context=stdlib_server_context)
    # No context: the system trust store, which does not know trustme's CA.
    relay = relay_factory(edge.url("https").replace("127.0.0.1", "localhost"))
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.message.startswith("4.7.5 ")
    assert edge.queue.envelopes == []


def test_https_refuses_wrong_host_name(ca, edge_factory, relay_factory, client_context) -> None:
    import ssl

    import gevent.ssl

    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.example").configure_cert(ctx)
    edge = edge_factory(context=ctx)
    relay = relay_factory(edge.url("https").replace("127.0.0.1", "localhost"), context=client_context)
    with pytest.raises(TransientRelayError) as info:
        relay.attempt(make_envelope(), 0)
    assert info.value.reply.message.startswith("4.7.5 ")
    assert edge.queue.envelopes == []
