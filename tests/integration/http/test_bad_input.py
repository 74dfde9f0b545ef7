"""WsgiEdge against malformed, oversized, slow and broken requests (raw sockets and http.client)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import time

import gevent
import pytest

from slimta.edge.wsgi import WsgiEdge

from .conftest import b64, post_bytes, raw_request, read_response

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


def smtp_reply(response) -> str:
    return response.headers.get("x-smtp-reply", "")


def test_raw_post_is_accepted(edge) -> None:
    response = raw_request(edge.address, post_bytes())
    assert response.status == 204
    assert smtp_reply(response).startswith('250; message="2.6.0 Message accepted for delivery')
    assert len(edge.queue.envelopes) == 1


def test_repeated_and_comma_separated_recipients(edge) -> None:
    extra = (f"X-Envelope-Recipient: {b64('c@example.com')} ; {b64('d@example.com')}",)
    response = raw_request(
        edge.address, post_bytes(recipients=("a@example.com", "b@example.com"), extra=extra)
    )
    assert response.status == 204
    [envelope] = edge.queue.envelopes
    assert envelope.recipients == ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]


def test_x_ehlo_header_and_default(edge) -> None:
    raw_request(edge.address, post_bytes(extra=("X-Ehlo: web.example",)))
    raw_request(edge.address, post_bytes())
    assert [e.client["name"] for e in edge.queue.envelopes] == ["web.example", "[127.0.0.1]"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405(edge, method) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=5)
    conn.request(method, "/", body=b"x" if method == "PUT" else None)
    response = conn.getresponse()
    response.read()
    assert response.status == 405
    assert response.getheader("Allow") == "POST"
    assert edge.queue.envelopes == []


def test_wrong_content_type_gets_415(edge) -> None:
    data = post_bytes().replace(b"Content-Type: message/rfc822", b"Content-Type: text/plain")
    assert raw_request(edge.address, data).status == 415
    assert edge.queue.envelopes == []


def test_content_type_parameters_are_allowed(edge) -> None:
    data = post_bytes().replace(b"message/rfc822", b"Message/RFC822; charset=utf-8")
    assert raw_request(edge.address, data).status == 204


def test_uri_pattern_mismatch_gets_404(edge_factory) -> None:
    edge = edge_factory(uri_pattern="/submit")
    assert raw_request(edge.address, post_bytes(path="/elsewhere")).status == 404
    assert raw_request(edge.address, post_bytes(path="/submit")).status == 204
    assert len(edge.queue.envelopes) == 1


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Envelope-Sender", "not base64!"),
        ("X-Envelope-Sender", "YWJj=ZGVm"),  # padding in the middle
        ("X-Envelope-Recipient", "%%%%"),
        ("X-Envelope-Recipient", base64.b64encode(b"\xff\xfe@example.com").decode()),  # not UTF-8
    ],
)
def test_malformed_base64_or_utf8_gets_400(edge, header, value) -> None:
    if header == "X-Envelope-Sender":
        data = post_bytes(sender=None, extra=(f"{header}: {value}",))
    else:
        data = post_bytes(recipients=None, extra=(f"{header}: {value}",))
    response = raw_request(edge.address, data)
    assert response.status == 400
    assert smtp_reply(response).startswith('501; message="5.5.4 ')
    assert edge.queue.envelopes == []


@pytest.mark.parametrize(
    "address",
    [
        "a@example.com\r\nBcc: victim@example.org",
        "a@example.com\rX",
        "a@example.com\nRCPT TO:<x@y>",
        "a\x00@example.com",
        "no-at-sign",
        "a@example.com> SIZE=1",
        "<a@example.com>",
        "a b@example.com",
        "x" * 65 + "@example.com",
    ],
)
@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_decoded_addresses_are_checked(edge, address, where) -> None:
    if where == "sender":
        data = post_bytes(sender=address)
    else:
        data = post_bytes(recipients=("ok@example.com", address))
    response = raw_request(edge.address, data)
    assert response.status == 400
    assert smtp_reply(response).startswith('501; message="5.1.7 Invalid ')
    assert "\r" not in smtp_reply(response)
    assert edge.queue.envelopes == []


def test_missing_recipients_gets_400(edge) -> None:
    response = raw_request(edge.address, post_bytes(recipients=None))
    assert response.status == 400
    assert smtp_reply(response) == '554; message="5.5.1 No valid recipients"'
    assert edge.queue.envelopes == []


def test_too_many_recipients_gets_400(edge_factory) -> None:
    class SmallEdge(WsgiEdge):
        max_recipients = 3

    edge = edge_factory(edge_class=SmallEdge)
    rcpts = tuple(f"r{i}@example.com" for i in range(4))
    response = raw_request(edge.address, post_bytes(recipients=rcpts))
    assert response.status == 400
    assert "5.5.3" in smtp_reply(response)
    assert edge.queue.envelopes == []


def test_control_character_in_x_ehlo_gets_400(edge) -> None:
    response = raw_request(edge.address, post_bytes(extra=("X-Ehlo: bad\x01name",)))
    assert response.status == 400
    assert edge.queue.envelopes == []


def test_mail_loop_is_refused(edge) -> None:
    body = b"".join(b"Received: from hop%d\r\n" % i for i in range(51)) + b"Subject: loop\r\n\r\nx\r\n"
    response = raw_request(edge.address, post_bytes(body=body))
    assert response.status == 500
    assert smtp_reply(response).startswith('554; message="5.4.6 ')
    assert edge.queue.envelopes == []


# -- body size, framing and disconnects -----------------------------------------------


def test_declared_length_over_limit_gets_413_without_reading(edge_factory) -> None:
    edge = edge_factory(max_size=1000)
    start = time.monotonic()
    with socket.create_connection(edge.address, timeout=5) as sock:
        # Announce a terabyte, send none of it: the answer must come at once.
        sock.sendall(post_bytes(body=b"", content_length=10**12))
        response = read_response(sock)
    assert time.monotonic() - start < 2
    assert response.status == 413
    assert smtp_reply(response).startswith('552; message="5.3.4 ')
    assert response.closed
    assert edge.queue.envelopes == []


def test_slightly_oversized_body_is_drained_then_refused(edge_factory) -> None:
    edge = edge_factory(max_size=1000)
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=5)
    headers = {
        "Content-Type": "message/rfc822",
        "X-Envelope-Sender": b64("s@example.com"),
        "X-Envelope-Recipient": b64("r@example.com"),
    }
    conn.request("POST", "/", body=b"Subject: big\r\n\r\n" + b"z" * 1500, headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 413
    assert edge.queue.envelopes == []


def chunked(body: bytes, size: int = 500) -> bytes:
    parts = [
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def chunked_request(body: bytes) -> bytes:
    head = post_bytes(body=b"").rsplit(b"Content-Length: 0\r\n", 1)[0]
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)


def test_chunked_body_within_limit_is_accepted(edge_factory) -> None:
    edge = edge_factory(max_size=5000)
    body = b"Subject: chunky\r\n\r\n" + b"c" * 3000 + b"\r\n"
    response = raw_request(edge.address, chunked_request(body))
    assert response.status == 204
    [envelope] = edge.queue.envelopes
    assert envelope.message == b"c" * 3000 + b"\r\n"


def test_chunked_body_over_limit_gets_413(edge_factory) -> None:
    edge = edge_factory(max_size=5000)
    body = b"Subject: chunky\r\n\r\n" + b"c" * 8000
    with socket.create_connection(edge.address, timeout=5) as sock:
        data = chunked_request(body)
        sock.sendall(data[: len(data) // 2 + 2000])  # more than the limit, then stall
        response = read_response(sock)
    assert response.status == 413
    assert response.closed
    assert edge.queue.envelopes == []


def test_broken_chunked_encoding_gets_400(edge) -> None:
    head = post_bytes(body=b"").rsplit(b"Content-Length: 0\r\n", 1)[0]
    response = raw_request(edge.address, head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    assert response.status == 400
    assert edge.queue.envelopes == []


def test_no_length_and_not_chunked_gets_411(edge) -> None:
    data = post_bytes(body=b"").replace(b"Content-Length: 0\r\n", b"")
    assert raw_request(edge.address, data).status == 411
    assert edge.queue.envelopes == []


def test_client_disconnecting_mid_body_queues_nothing(edge) -> None:
    for _ in range(3):
        with socket.create_connection(edge.address, timeout=5) as sock:
            sock.sendall(post_bytes(body=b"Subject: cut\r\n\r\n" + b"a" * 100, content_length=5000))
            gevent.sleep(0.05)
    gevent.sleep(0.1)
    assert edge.queue.envelopes == []
    assert raw_request(edge.address, post_bytes()).status == 204
    assert len(edge.queue.envelopes) == 1


def test_slow_body_gets_408(edge_factory) -> None:
    class SlowEdge(WsgiEdge):
        data_timeout = 0.3

    edge = edge_factory(edge_class=SlowEdge)
    with socket.create_connection(edge.address, timeout=5) as sock:
        sock.sendall(post_bytes(body=b"Subject: slow\r\n\r\n", content_length=100))
        response = read_response(sock)
    assert response.status == 408
    assert smtp_reply(response).startswith('451; message="4.4.2 ')
    assert edge.queue.envelopes == []


def test_idle_connection_is_closed_after_socket_timeout(edge_factory) -> None:
    class QuickEdge(WsgiEdge):
        socket_timeout = 0.3

    edge = edge_factory(edge_class=QuickEdge)
    with socket.create_connection(edge.address, timeout=5) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""
    assert time.monotonic() - start < 2


def test_queue_crash_gets_503(edge) -> None:
    edge.queue.crash = True
    response = raw_request(edge.address, post_bytes())
    assert response.status == 503
    assert smtp_reply(response) == '451; message="4.3.0 Unhandled error"'


def test_keep_alive_survives_refusals(edge) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", edge.port, timeout=5)
    bad = {
        "Content-Type": "message/rfc822",
        "X-Envelope-Sender": "!!",
        "X-Envelope-Recipient": b64("r@example.com"),
    }
    good = dict(bad, **{"X-Envelope-Sender": b64("s@example.com")})
    for headers, status in [(bad, 400), (good, 204), (bad, 400), (good, 204)]:
        conn.request("POST", "/", body=b"Subject: k\r\n\r\nk\r\n", headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == status
    assert len(edge.queue.envelopes) == 2


# -- TLS ------------------------------------------------------------------------------


def test_plaintext_to_tls_port_and_stalled_handshake(
    edge_factory, stdlib_server_context, client_context
) -> None:
    class QuickEdge(WsgiEdge):
        socket_timeout = 0.5

    edge = edge_factory(edge_class=QuickEdge, context=stdlib_server_context)
    with socket.create_connection(edge.address, timeout=5) as sock:
        sock.sendall(post_bytes())
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(65536)[:1] != b"H"  # a TLS alert or EOF, never HTTP
    stalled = socket.create_connection(edge.address, timeout=5)  # says nothing
    # Meanwhile a real client is served (the stalled handshake holds one greenlet only).
    with socket.create_connection(edge.address, timeout=5) as raw:
        tls = client_context.wrap_socket(raw, server_hostname="localhost")
        tls.sendall(post_bytes())
        assert read_response(tls).status == 204
    start = time.monotonic()
    assert stalled.recv(1) == b""
    assert time.monotonic() - start < 2
    stalled.close()
    assert len(edge.queue.envelopes) == 1


def test_https_with_http_client(edge_factory, gevent_server_context, ca) -> None:
    edge = edge_factory(context=gevent_server_context)
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    conn = http.client.HTTPSConnection("localhost", edge.port, context=ctx, timeout=5)
    headers = {
        "Content-Type": "message/rfc822",
        "X-Envelope-Sender": b64("s@example.com"),
        "X-Envelope-Recipient": b64("r@example.com"),
    }
    conn.request("POST", "/", body=b"Subject: s\r\n\r\ns\r\n", headers=headers)
    response = conn.getresponse()
    response.read()
    assert response.status == 204
    assert edge.queue.envelopes[0].client["protocol"] == "HTTPS"


# -- request header section ------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ("X-Folded: first", " continued"),  # obsolete line folding
        ("No colon here",),
        ("Bad Name: x",),
        tuple(f"X-Many-{i}: v" for i in range(101)),
        ("X-Long: " + "a" * 9000,),
        ("Content-Length: 5",),  # a second, different length
        ("Transfer-Encoding: chunked",),  # and a Content-Length
        ("Transfer-Encoding: gzip, chunked",),
    ],
    ids=["obs-fold", "no-colon", "bad-name", "too-many", "too-long", "two-lengths", "te-and-cl", "te-gzip"],
)
def test_malformed_header_sections_get_400(edge, extra) -> None:
    response = raw_request(edge.address, post_bytes(extra=extra))
    assert response.status == 400
    assert edge.queue.envelopes == []


def test_underscore_header_names_are_not_envelope_headers(edge) -> None:
    # pywsgi drops names with "_" so X_Envelope_Recipient cannot pose as
    # X-Envelope-Recipient (header smuggling through proxies).
    extra = (f"X_Envelope_Recipient: {b64('sneaky@example.com')}",)
    response = raw_request(edge.address, post_bytes(extra=extra))
    assert response.status == 204
    assert edge.queue.envelopes[0].recipients == ["rcpt@example.com"]


def test_header_names_are_case_insensitive(edge) -> None:
    data = (
        post_bytes()
        .replace(b"Content-Length", b"content-LENGTH")
        .replace(b"X-Envelope-Sender", b"x-envelope-sender")
    )
    assert raw_request(edge.address, data).status == 204
    assert edge.queue.envelopes[0].sender == "sender@example.com"
