"""PIPELINING (RFC 2920): a group of commands is answered in one write."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]


def test_pipelined_group_answered_in_order_in_one_write(edge, raw_client):
    client = raw_client(edge.address)
    client.send(
        b"EHLO client.test\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\n"
        b"RCPT TO:<c@dst.test>\r\nDATA\r\n"
    )
    replies = client.replies(5)
    assert [code for code, _ in replies] == [250, 250, 250, 250, 354]
    assert b"<a@src.test>" in replies[1][1]
    assert b"<b@dst.test>" in replies[2][1]
    assert b"<c@dst.test>" in replies[3][1]
    # The server wrote the five replies with one sendall; on loopback a
    # single recv gets them all.
    assert client.recv_calls == 2  # the banner, then the group
    client.send(b"Subject: pipelined\r\n\r\nhi\r\n.\r\nMAIL FROM:<x@src.test>\r\nRSET\r\nQUIT\r\n")
    assert client.codes(4) == [250, 250, 250, 221]
    assert client.recv_calls == 3
    (env,) = edge.queue.envelopes
    assert env.recipients == ["b@dst.test", "c@dst.test"]
    assert edge.hooks() == [
        "banner",
        "ehlo",
        "mail",
        "rcpt",
        "rcpt",
        "data",
        "have_data",
        "queued",
        "mail",
        "rset",
    ]


def test_pipelined_errors_do_not_shift_replies(edge, raw_client):
    client = raw_client(edge.address)
    client.ehlo()
    client.send(
        b"RCPT TO:<early@dst.test>\r\nMAIL FROM:<bad\r\nMAIL FROM:<a@src.test>\r\n"
        b"RCPT TO:<b@dst.test>\r\nNOPE\r\nDATA\r\n"
    )
    assert client.codes(6) == [503, 501, 250, 250, 500, 354]
    client.send(b"\r\nbody\r\n.\r\n")
    assert client.reply()[0] == 250
    assert edge.queue.envelopes[0].recipients == ["b@dst.test"]
