"""Hostile and out-of-bounds input over raw sockets: smuggling, limits, timeouts."""

from __future__ import annotations

import logging
import smtplib
import time

import gevent
import pytest

from tests.smuggling import CONTROL, MAIL_RCPT_DATA, SMUGGLED, VARIANTS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

OPEN = b"EHLO t\r\n" + MAIL_RCPT_DATA


def _smuggle_session(edge, raw_client, variant: bytes, split: int | None) -> list[int]:
    client = raw_client(edge.address)
    client.send(OPEN)
    assert client.codes(4) == [250, 250, 250, 354]
    payload = b"Subject: outer\r\n\r\nbody" + variant + SMUGGLED
    if split is None:
        client.send(payload)
    else:
        client.send(payload[:split])
        gevent.sleep(0.005)
        client.send(payload[split:])
    codes = []
    while True:
        try:
            code, _ = client.reply()
        except ConnectionError:
            break
        codes.append(code)
        if code in (221, 421):
            break
    return codes


def _split_points(variant: bytes) -> list[int | None]:
    start = len(b"Subject: outer\r\n\r\nbody")
    return [None, *range(start - 1, start + len(variant) + 2)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("variant", VARIANTS, ids=[repr(v) for v in VARIANTS])
def test_smuggling_variant_strict(edge, raw_client, variant):
    for split in _split_points(variant):
        before = len(edge.queue.envelopes)
        codes = _smuggle_session(edge, raw_client, variant, split)
        # One message only, refused whole: 550 5.5.2, then QUIT's 221.
        assert codes == [550, 221], (split, codes)
        assert len(edge.queue.envelopes) == before
    assert all(env.sender != "ceo@legit.test" for env in edge.queue.envelopes)
    assert not any(c[0] == "mail" and c[2] == "ceo@legit.test" for c in edge.calls)


def test_smuggling_control_is_two_messages(edge, raw_client):
    codes = _smuggle_session(edge, raw_client, CONTROL, None)
    assert codes == [250, 250, 250, 354, 250, 221]
    assert [env.sender for env in edge.queue.envelopes] == ["a@legit.test", "ceo@legit.test"]


def test_smuggling_strict_reply_text(edge, raw_client):
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    client.send(b"Subject: outer\r\n\r\nbody\n.\n" + SMUGGLED)
    assert client.reply()[1].startswith(b"550 5.5.2")


# -- BDAT ------------------------------------------------------------------


def _bdat_open(client) -> None:
    client.send(b"EHLO t\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\n")
    assert client.codes(3) == [250, 250, 250]


def test_bdat_chunks(edge, raw_client):
    client = raw_client(edge.address)
    _bdat_open(client)
    chunks = [b"Subject: chunked\r\n\r\n", b"part one\r\n.\r\nMAIL FROM:<x@y.test>\r\n", b"end\r\n"]
    client.send(b"BDAT %d\r\n%s" % (len(chunks[0]), chunks[0]))
    client.send(b"BDAT %d\r\n%s" % (len(chunks[1]), chunks[1]))
    client.send(b"BDAT %d LAST\r\n%s" % (len(chunks[2]), chunks[2]))
    assert client.codes(3) == [250, 250, 250]
    (env,) = edge.queue.envelopes
    _, body = env.flatten()
    # Nothing is unstuffed or parsed inside BDAT chunks.
    assert body == b"part one\r\n.\r\nMAIL FROM:<x@y.test>\r\nend\r\n"
    assert [c[2] for c in edge.calls if c[0] == "mail"] == ["a@src.test"]
    have_data = next(c for c in edge.calls if c[0] == "have_data")
    assert have_data[2] == b"".join(chunks)


def test_bdat_pipelined_in_one_write(edge, raw_client):
    client = raw_client(edge.address)
    msg = b"Subject: x\r\n\r\n..dots stay\r\n"
    client.send(
        b"EHLO t\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nBDAT %d LAST\r\n%sQUIT\r\n"
        % (len(msg), msg)
    )
    assert client.codes(5) == [250, 250, 250, 250, 221]
    assert edge.queue.envelopes[0].flatten()[1] == b"..dots stay\r\n"


@pytest.mark.parametrize(("extra", "code"), [(0, 250), (1, 552)])
def test_bdat_max_size(edge_factory, raw_client, extra, code):
    edge = edge_factory(max_size=1000)
    client = raw_client(edge.address)
    _bdat_open(client)
    msg = b"Subject: s\r\n\r\n" + b"x" * (1000 - 14 - 2 + extra) + b"\r\n"
    assert len(msg) == 1000 + extra
    client.send(b"BDAT 500\r\n" + msg[:500] + b"BDAT %d LAST\r\n" % (len(msg) - 500) + msg[500:])
    assert client.codes(2) == [250, code]
    assert len(edge.queue.envelopes) == (1 if code == 250 else 0)
    client.send(b"NOOP\r\n")
    client.expect(250)


# -- SMTPUTF8 ------------------------------------------------------------------


def test_smtputf8_address(edge):
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        client.sendmail(
            "jörg@münchen.test",
            ["δοκιμή@παράδειγμα.test"],
            b"Subject: utf8\r\n\r\nhi\r\n",
            mail_options=["SMTPUTF8"],
        )
    (env,) = edge.queue.envelopes
    assert env.sender == "jörg@münchen.test"
    assert env.recipients == ["δοκιμή@παράδειγμα.test"]


def test_utf8_address_without_smtputf8(edge, raw_client):
    client = raw_client(edge.address)
    client.ehlo()
    client.send("MAIL FROM:<jörg@münchen.test>\r\nMAIL FROM:<a@src.test>\r\n".encode())
    code, text = client.reply()
    assert code == 553
    assert text.startswith(b"553 5.6.7")
    client.expect(250)
    client.send("RCPT TO:<δοκιμή@παράδειγμα.test>\r\n".encode())
    assert client.reply()[1].startswith(b"553 5.6.7")


# -- line and size limits ------------------------------------------------------------------


def test_two_megabyte_line(edge, raw_client):
    client = raw_client(edge.address, timeout=8)
    client.ehlo()
    start = time.process_time()
    client.send(b"MAIL FROM:<" + b"A" * (2 * 1024 * 1024) + b">\r\n")
    code, text = client.reply()
    assert code == 500
    assert text.startswith(b"500 5.5.6")
    client.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    client.send(b"Subject: after\r\n\r\nok\r\n.\r\n")
    client.expect(250)
    assert len(edge.queue.envelopes) == 1
    assert time.process_time() - start < 2


@pytest.mark.parametrize(("length", "code"), [(512, 250), (513, 500)])
def test_command_line_limit(edge, raw_client, length, code):
    client = raw_client(edge.address)
    client.ehlo()
    line = b"NOOP " + b"x" * (length - 7) + b"\r\n"
    assert len(line) == length
    client.send(line)
    assert client.reply()[0] == code


def test_oversized_message_body_never_parsed(edge_factory, raw_client):
    edge = edge_factory(max_size=1000)
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    body = b"Subject: big\r\n\r\n" + b"MAIL FROM:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n" * 200
    client.send(body + b".\r\nNOOP\r\n")
    code, text = client.reply()
    assert code == 552
    assert text.startswith(b"552 5.3.4")
    client.expect(250)  # the NOOP after the real end
    assert edge.queue.envelopes == []
    assert [c[2] for c in edge.calls if c[0] == "mail"] == ["a@legit.test"]
    assert client.buf == b""


@pytest.mark.parametrize(("extra", "code"), [(0, 250), (1, 552)])
def test_message_at_max_size(edge_factory, raw_client, extra, code):
    edge = edge_factory(max_size=1000)
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    msg = b"Subject: s\r\n\r\n" + b"y" * (1000 - 14 - 2 + extra) + b"\r\n"
    client.send(msg + b".\r\n")
    assert client.reply()[0] == code
    assert len(edge.queue.envelopes) == (1 if code == 250 else 0)


@pytest.mark.parametrize(("size", "code"), [(1000, 250), (1001, 552)])
def test_size_parameter(edge_factory, raw_client, size, code):
    edge = edge_factory(max_size=1000)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<a@src.test> SIZE=%d\r\n" % size)
    assert client.reply()[0] == code


def test_recipient_limit(edge, raw_client):
    client = raw_client(edge.address)
    client.ehlo()
    rcpts = b"".join(b"RCPT TO:<r%d@dst.test>\r\n" % i for i in range(1001))
    client.send(b"MAIL FROM:<a@src.test>\r\n" + rcpts + b"DATA\r\n")
    codes = client.codes(1003)
    assert codes[0] == 250
    assert codes[1:1001] == [250] * 1000
    assert codes[1001] == 452
    assert codes[1002] == 354
    client.send(b"\r\nx\r\n.\r\n")
    client.expect(250)
    assert len(edge.queue.envelopes[0].recipients) == 1000


def test_error_limit(edge, raw_client):
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"!bad\r\n" * 19 + b"NOOP\r\n")
    assert client.codes(20) == [500] * 19 + [250]
    client.send(b"!bad\r\nNOOP\r\n")
    assert client.reply()[1].startswith(b"500 5.5.2")
    assert client.reply()[0] == 421
    assert client.closed_by_server()
    assert client.buf == b""


# -- timeouts ------------------------------------------------------------------------------


def test_idle_client_timed_out(edge_factory, raw_client):
    edge = edge_factory(command_timeout=0.5)
    client = raw_client(edge.address)
    start = time.monotonic()
    code, text = client.reply()
    assert code == 421
    assert b"4.4.2" in text
    assert client.closed_by_server()
    assert 0.4 < time.monotonic() - start < 1.5


def test_command_timeout_resets_per_command(edge_factory, raw_client):
    edge = edge_factory(command_timeout=0.5)
    client = raw_client(edge.address)
    for _ in range(4):
        gevent.sleep(0.3)
        client.send(b"NOOP\r\n")
        client.expect(250)


def test_data_timeout(edge_factory, raw_client):
    edge = edge_factory(command_timeout=5, data_timeout=0.5)
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    client.send(b"Subject: slow\r\n\r\npartial")
    start = time.monotonic()
    code, text = client.reply()
    assert code == 421
    assert b"4.4.2" in text
    assert client.closed_by_server()
    assert time.monotonic() - start < 1.5
    assert edge.queue.envelopes == []


def test_data_timeout_covers_whole_message(edge_factory, raw_client):
    # data_timeout bounds the whole of the data, so a client trickling one
    # octet at a time (slowloris) cannot keep the session alive.
    edge = edge_factory(command_timeout=5, data_timeout=0.6)
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    start = time.monotonic()
    closed_after = None
    for _ in range(20):
        try:
            client.send(b"x")
        except (BrokenPipeError, ConnectionResetError):
            closed_after = time.monotonic() - start
            break
        gevent.sleep(0.1)
    assert closed_after is not None
    assert closed_after < 0.6 + 1
    assert client.reply()[0] == 421


def test_data_timeout_is_per_message(edge_factory, raw_client):
    # Two messages each taking most of data_timeout: neither is cut short.
    edge = edge_factory(command_timeout=5, data_timeout=0.6)
    client = raw_client(edge.address)
    client.send(OPEN)
    client.codes(4)
    for i in range(2):
        for part in (b"Subject: m\r\n", b"\r\nslow ", b"body\r\n"):
            client.send(part)
            gevent.sleep(0.15)
        client.send(
            b".\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n" if i == 0 else b".\r\n"
        )
        assert client.codes(4 if i == 0 else 1) == ([250, 250, 250, 354] if i == 0 else [250])
    assert len(edge.queue.envelopes) == 2


# -- handler errors ------------------------------------------------------------------------


def test_handler_exception(edge_factory, raw_client, caplog):
    def boom(self, reply, sender, params):
        if sender == "boom@src.test":
            raise RuntimeError("validator exploded")

    caplog.set_level(logging.DEBUG)
    edge = edge_factory(overrides={"mail": boom})
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"MAIL FROM:<boom@src.test>\r\nNOOP\r\n")
    code, text = client.reply()
    assert code == 421
    assert b"4.3.0" in text
    assert client.closed_by_server()
    assert client.buf == b""
    gevent.sleep(0.05)
    logged = [
        r
        for r in caplog.records
        if "validator exploded" in r.getMessage() or (r.exc_info and "exploded" in str(r.exc_info[1]))
    ]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert "Traceback" in logged[0].getMessage() or logged[0].exc_info
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as good:
        good.sendmail("a@src.test", ["b@dst.test"], b"Subject: ok\r\n\r\nfine\r\n")
    assert len(edge.queue.envelopes) == 1


# -- many connections ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_thousand_simultaneous_connects(edge):
    import socket

    def connect():
        sock = socket.create_connection(edge.address, timeout=10)
        try:
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(1024)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            sock.close()

    start = time.monotonic()
    jobs = [gevent.spawn(connect) for _ in range(1000)]
    gevent.joinall(jobs, timeout=15)
    elapsed = time.monotonic() - start
    banners = [job.value for job in jobs if job.successful()]
    assert len(banners) == 1000
    assert all(b.startswith(b"220 ") for b in banners)
    assert elapsed < 5
