"""SpamAssassin policy against a spamd-protocol server on 127.0.0.1.

The peer is a small gevent StreamServer that speaks the spamc/spamd wire
format the way spamd does: it reads the request line and header block,
then exactly ``Content-length`` bytes of message, and answers with a
``SPAMD/1.1`` status line, ``Content-length`` and ``Spam`` headers and the
comma-separated rule names.  Messages containing ``VIAGRA`` are spam.
"""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.server import StreamServer

from slimta.envelope import Envelope
from slimta.policy import PolicyError
from slimta.policy.spamassassin import SpamAssassin, SpamAssassinError

pytestmark = pytest.mark.integration


@dataclass
class Request:
    command: bytes
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class FakeSpamd:
    """State of the peer: how to answer, and what it was sent."""

    mode: str = "normal"
    requests: list[Request] = field(default_factory=list)
    address: tuple[str, int] = ("127.0.0.1", 0)

    def handle(self, sock: socket.socket, _addr: Any) -> None:
        reader = sock.makefile("rb")
        try:
            command = reader.readline().rstrip(b"\r\n")
            headers: dict[bytes, bytes] = {}
            while True:
                line = reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers[b"content-length"]))
            self.requests.append(Request(command, headers, body))
            sock.sendall(self.answer(body))
        finally:
            reader.close()
            sock.close()

    def answer(self, body: bytes) -> bytes:
        if self.mode == "hang":
            gevent.sleep(30)
        if self.mode == "malformed":
            return b"HTTP/1.1 200 OK\r\n\r\nhello"
        if self.mode == "no-spam-header":
            return b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n"
        if self.mode == "error":
            return b"SPAMD/1.0 76 Bad header line: (Content-length missing)\r\n"
        if self.mode == "silent":
            return b""
        if b"VIAGRA" in body:
            spam, score, symbols = b"True", b"15.2", b"BAYES_99,DRUG_ED_CAPS,URIBL_BLACK"
        else:
            spam, score, symbols = b"False", b"-1.9", b"BAYES_00"
        return (
            b"SPAMD/1.1 0 EX_OK\r\n"
            b"Content-length: " + str(len(symbols)).encode() + b"\r\n"
            b"Spam: " + spam + b" ; " + score + b" / 5.0\r\n"
            b"\r\n" + symbols
        )


@pytest.fixture
def spamd() -> Iterator[FakeSpamd]:
    peer = FakeSpamd()
    server = StreamServer(("127.0.0.1", 0), peer.handle)
    server.start()
    peer.address = ("127.0.0.1", server.server_port)
    try:
        yield peer
    finally:
        server.stop(timeout=1)


def make_env(body: bytes) -> Envelope:
    env = Envelope("sender@example.com", ["rcpt@example.net"])
    env.parse(b"From: sender@example.com\r\nSubject: offer\r\n\r\n" + body)
    return env


def test_spam_is_flagged_with_symbols(spamd: FakeSpamd) -> None:
    env = make_env(b"Buy VIAGRA now\r\n")
    policy = SpamAssassin(spamd.address, timeout=5)
    policy.apply(env)
    assert env.headers is not None
    assert env.headers["X-Spam-Status"] == "YES"
    assert env.headers["X-Spam-Symbols"] == "BAYES_99,DRUG_ED_CAPS,URIBL_BLACK"

    (request,) = spamd.requests
    assert request.command == b"SYMBOLS SPAMC/1.5"
    assert request.headers[b"user"] == b"slimta"
    header_data, body = make_env(b"Buy VIAGRA now\r\n").flatten()
    assert request.body == header_data + body
    assert int(request.headers[b"content-length"]) == len(header_data + body)


def test_ham_is_marked_no(spamd: FakeSpamd) -> None:
    env = make_env(b"See you at lunch\r\n")
    SpamAssassin(spamd.address, timeout=5).apply(env)
    assert env.headers is not None
    assert env.headers["X-Spam-Status"] == "NO"
    assert env.headers["X-Spam-Symbols"] is None


def test_forged_verdict_headers_are_replaced(spamd: FakeSpamd) -> None:
    env = Envelope("s@x", ["r@y"])
    env.parse(b"X-Spam-Status: NO\r\nX-Spam-Symbols: NONE\r\nSubject: x\r\n\r\nVIAGRA\r\n")
    SpamAssassin(spamd.address, timeout=5).apply(env)
    assert env.headers is not None
    assert env.headers.get_all("X-Spam-Status") == ["YES"]
    assert env.headers.get_all("X-Spam-Symbols") == ["BAYES_99,DRUG_ED_CAPS,URIBL_BLACK"]


def test_scan_raw_bytes_and_str(spamd: FakeSpamd) -> None:
    policy = SpamAssassin(spamd.address, timeout=5)
    assert policy.scan(b"Subject: x\r\n\r\nVIAGRA\r\n") == (True, ["BAYES_99", "DRUG_ED_CAPS", "URIBL_BLACK"])
    assert policy.scan("Subject: x\r\n\r\nhello\r\n") == (False, ["BAYES_00"])
    assert spamd.requests[0].body == b"Subject: x\r\n\r\nVIAGRA\r\n"


def test_large_message_is_sent_whole(spamd: FakeSpamd) -> None:
    body = (b"x" * 998 + b"\r\n") * 2000
    spammy, _ = SpamAssassin(spamd.address, timeout=10).scan(make_env(body + b"VIAGRA\r\n"))
    assert spammy is True
    assert spamd.requests[0].body.endswith(body + b"VIAGRA\r\n")


def test_custom_socket_creator_is_used(spamd: FakeSpamd) -> None:
    seen = []

    def creator(address: Any) -> socket.socket:
        seen.append(address)
        return socket.create_connection(address)

    SpamAssassin(spamd.address, timeout=5, socket_creator=creator).scan(b"hello")
    assert seen == [spamd.address]


def test_default_address() -> None:
    assert SpamAssassin().address == ("127.0.0.1", 783)


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("malformed", "malformed spamd status line"),
        ("no-spam-header", "no Spam header"),
        ("error", "error 76 Bad header line"),
        ("silent", "without answering"),
    ],
)
def test_bad_answers_raise_clear_errors(spamd: FakeSpamd, mode: str, words: str) -> None:
    spamd.mode = mode
    env = make_env(b"hello\r\n")
    with pytest.raises(SpamAssassinError, match=words) as info:
        SpamAssassin(spamd.address, timeout=5).apply(env)
    assert isinstance(info.value, PolicyError)
    assert env.headers is not None
    assert env.headers["X-Spam-Status"] is None


def test_timeout_raises_and_does_not_block_other_greenlets(spamd: FakeSpamd) -> None:
    spamd.mode = "hang"
    ticks = []

    def ticker() -> None:
        for _ in range(5):
            ticks.append(1)
            gevent.sleep(0.05)

    other = gevent.spawn(ticker)
    with pytest.raises(SpamAssassinError, match=r"did not answer within 0\.3 seconds"):
        SpamAssassin(spamd.address, timeout=0.3).scan(b"hello")
    other.join()
    assert len(ticks) == 5


def test_connection_refused_raises_spamassassin_error() -> None:
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(SpamAssassinError, match="spamd at"):
        SpamAssassin(("127.0.0.1", port), timeout=5).scan(b"hello")
