"""SmtpEdge against the stdlib smtplib client: extensions, envelopes, hooks."""

from __future__ import annotations

import logging
import smtplib
import socket

import gevent
import gevent.event
import pytest

from slimta.smtp.reply import Reply

from .conftest import HOSTNAME, QueueRefused, RecordingQueue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MESSAGE = b"From: a@src.test\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"
BASE_EXTENSIONS = {"pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "chunking", "size", "dsn"}


def _smtp(edge, **kwargs) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", edge.port, timeout=5, **kwargs)


def test_ehlo_extensions_plain(edge):
    with _smtp(edge) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert set(client.esmtp_features) == BASE_EXTENSIONS
        assert int(client.esmtp_features["size"]) == 10240000


def test_ehlo_extensions_with_tls_and_auth(edge_factory, stdlib_server_context):
    edge = edge_factory(context=stdlib_server_context, auth=True, max_size=4096)
    with _smtp(edge) as client:
        client.ehlo("client.test")
        assert set(client.esmtp_features) == BASE_EXTENSIONS | {"starttls", "auth"}
        assert client.esmtp_features["size"] == "4096"
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN", "CRAM-MD5"}


def test_sendmail_records_envelope(edge):
    with _smtp(edge) as client:
        client.ehlo("client.test")
        refused = client.sendmail("a@src.test", ["b@dst.test", "c@dst.test", "d@other.test"], MESSAGE)
        assert refused == {}
    (env,) = edge.queue.envelopes
    assert env.sender == "a@src.test"
    assert env.recipients == ["b@dst.test", "c@dst.test", "d@other.test"]
    assert env.headers["Subject"] == "hello"
    assert env.headers["From"] == "a@src.test"
    header_bytes, body = env.flatten()
    assert b"Subject: hello\r\n" in header_bytes
    assert body == b"line one\r\nline two\r\n"
    assert env.client["ip"] == "127.0.0.1"
    assert env.client["name"] == "client.test"
    assert env.client["protocol"] == "ESMTP"
    assert env.client["auth"] is None
    assert env.receiver == HOSTNAME


def test_helo_protocol_is_smtp(edge):
    with _smtp(edge) as client:
        client.helo("old.test")
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    assert edge.queue.envelopes[0].client["protocol"] == "SMTP"


def test_250_only_after_enqueue_returned(edge_factory):
    gate = gevent.event.Event()
    queue = RecordingQueue(gate=gate)
    edge = edge_factory(queue=queue)
    result: list[object] = []
    client = _smtp(edge)
    client.ehlo("client.test")

    def send():
        result.append(client.sendmail("a@src.test", ["b@dst.test"], MESSAGE))

    sender = gevent.spawn(send)
    assert queue.entered.wait(5)
    # The server is inside enqueue(): the client must still be waiting.
    gevent.sleep(0.3)
    assert not sender.ready()
    assert result == []
    assert queue.envelopes == []
    gate.set()
    sender.join(5)
    assert result == [{}]
    assert len(queue.envelopes) == 1
    client.quit()


def test_queue_error_answers_451(edge_factory):
    edge = edge_factory(queue=RecordingQueue(error=QueueRefused()))
    with _smtp(edge) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        assert info.value.smtp_code == 451
        assert info.value.smtp_error.startswith(b"4.3.0")
    hooks = [c for c in edge.calls if c[0] == "queued"]
    assert len(hooks) == 1
    assert isinstance(hooks[0][2][0][1], QueueRefused)


def test_queue_error_with_its_own_reply(edge_factory):
    error = QueueRefused(Reply("550", "5.7.1 Refused by policy"))
    edge = edge_factory(queue=RecordingQueue(error=error))
    with _smtp(edge) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        assert info.value.smtp_code == 550
        assert info.value.smtp_error == b"5.7.1 Refused by policy"


def test_hooks_called_in_order(edge):
    with _smtp(edge) as client:
        client.ehlo("client.test")
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        client.rset()
    gevent.sleep(0.1)
    assert edge.hooks() == ["banner", "ehlo", "mail", "rcpt", "data", "have_data", "queued", "rset"]
    have_data = edge.calls[5]
    assert have_data[2] == MESSAGE
    queued = edge.calls[6]
    assert queued[2][0][1] == "id1"


def test_have_data_hook_can_refuse(edge_factory):
    def refuse(self, reply, data):
        reply.code = "554"
        reply.message = "5.6.0 No thanks"

    edge = edge_factory(overrides={"have_data": refuse})
    with _smtp(edge) as client:
        client.ehlo("client.test")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
        assert info.value.smtp_code == 554
    assert edge.queue.envelopes == []
    assert "queued" not in edge.hooks()


@pytest.mark.parametrize("code", ["421", "221"])
@pytest.mark.parametrize("hook", ["mail", "rset", "ehlo"])
def test_closing_reply_from_hook_closes(edge_factory, raw_client, code, hook):
    def close(self, reply, *args):
        reply.code = code
        reply.message = "4.7.0 Go away" if code == "421" else "2.0.0 Bye"

    edge = edge_factory(overrides={hook: close})
    client = raw_client(edge.address)
    if hook != "ehlo":
        client.ehlo()
    command = {"mail": b"MAIL FROM:<a@src.test>\r\n", "rset": b"RSET\r\n", "ehlo": b"EHLO c.test\r\n"}[hook]
    client.send(command + b"NOOP\r\n")
    assert client.reply()[0] == int(code)
    assert client.closed_by_server()
    assert client.buf == b""  # the NOOP was never answered


def test_banner_hook_421_closes(edge_factory, raw_client):
    def refuse(self, reply, address):
        reply.code = "421"
        reply.message = "4.3.2 Not now"

    edge = edge_factory(overrides={"banner": refuse})
    client = raw_client(edge.address, banner=False)
    assert client.reply()[0] == 421
    assert client.closed_by_server()


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_empty_greeting_is_501(edge, raw_client, verb):
    client = raw_client(edge.address)
    client.send(verb + b"\r\n" + verb + b" \r\n")
    assert client.codes(2) == [501, 501]
    client.ehlo()


def test_rcpt_refused_by_hook_not_recorded(edge_factory):
    def refuse(self, reply, rcpt, params):
        if rcpt.endswith("@bad.test"):
            reply.code = "550"
            reply.message = "5.1.1 No such user"

    edge = edge_factory(overrides={"rcpt": refuse})
    with _smtp(edge) as client:
        client.ehlo("client.test")
        refused = client.sendmail("a@src.test", ["x@bad.test", "ok@dst.test"], MESSAGE)
        assert set(refused) == {"x@bad.test"}
    assert edge.queue.envelopes[0].recipients == ["ok@dst.test"]


class ExplodingQueue(RecordingQueue):
    def enqueue(self, envelope):
        raise RuntimeError("storage exploded")


def test_queue_exception_answers_421_and_is_logged_once(edge_factory, raw_client, caplog):
    caplog.set_level(logging.DEBUG)
    edge = edge_factory(queue=ExplodingQueue())
    client = raw_client(edge.address)
    client.send(b"EHLO c\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n")
    assert client.codes(4) == [250, 250, 250, 354]
    client.send(MESSAGE + b".\r\n")
    code, text = client.reply()
    assert code == 421
    assert text.startswith(b"421 4.3.0")
    assert client.closed_by_server()
    gevent.sleep(0.05)
    assert len([r for r in caplog.records if "storage exploded" in r.getMessage()]) == 1


def test_banner_and_ehlo_start_with_hostname(edge, raw_client):
    # RFC 5321 4.2 / 4.1.1.1: greeting = "220 " Domain ..., ehlo-ok-rsp = "250" SP Domain ...
    client = raw_client(edge.address, banner=False)
    assert client.reply()[1].startswith(b"220 " + HOSTNAME.encode() + b" ")
    assert client.ehlo().startswith(b"250-" + HOSTNAME.encode())
    client.send(b"HELO c.test\r\n")
    assert client.expect(250).startswith(b"250 " + HOSTNAME.encode())


def test_pool_bounds_sessions(edge_factory, raw_client):
    from gevent.pool import Pool

    edge = edge_factory(pool=Pool(1))
    first = raw_client(edge.address)
    second = raw_client(edge.address, banner=False, timeout=0.5)
    with pytest.raises(TimeoutError):
        second.reply()
    first.send(b"QUIT\r\n")
    first.expect(221)
    second.sock.settimeout(5)
    assert second.reply()[0] == 220


def test_listener_socket(edge_factory, raw_client):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    edge = edge_factory(listener=sock)
    raw_client(edge.address).ehlo()


@pytest.mark.parametrize(("hops", "accepted"), [(50, True), (51, False)])
def test_hop_count_limit(edge, hops, accepted):
    received = b"".join(
        b"Received: from hop%d.test by hop%d.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1)
        for i in range(hops)
    )
    with _smtp(edge) as client:
        client.ehlo("client.test")
        client.mail("a@src.test")
        client.rcpt("b@dst.test")
        code, msg = client.data(received + MESSAGE)
    if accepted:
        assert code == 250
        assert len(edge.queue.envelopes) == 1
    else:
        assert code == 554
        assert msg.startswith(b"5.4.6")
        assert not edge.queue.envelopes
