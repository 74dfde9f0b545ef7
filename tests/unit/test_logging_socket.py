"""SocketLogger: the fd lines, socket_error_log_level, and AUTH redaction."""

from __future__ import annotations

import base64
import io
import itertools
import logging
import socket
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slimta.logging.socket as socklog
from slimta.logging import getSocketLogger, parseline
from slimta.logging.socket import SocketLogger

_fds = itertools.count(1000)


class FakeSocket:
    """Just enough of a socket for the logger: a file descriptor and a peer."""

    def __init__(self, peer=("192.0.2.1", 25)):
        self.fd = next(_fds)
        self.peer = peer
        self.fileno_calls = 0

    def fileno(self):
        self.fileno_calls += 1
        return self.fd

    def getpeername(self):
        if self.peer is None:
            raise OSError(107, "Transport endpoint is not connected")
        return self.peer


@pytest.fixture
def capture():
    """Capture the formatted output of a fresh logger, as a log file would hold it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test.socklog.{next(_fds)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(handler)
    yield SocketLogger(logger), stream
    logger.removeHandler(handler)


def lines(stream):
    return [line.split(" ", 1) for line in stream.getvalue().splitlines()]


def parsed(stream):
    return [parseline(msg) for _, msg in lines(stream)]


# ------------------------------------------------------------- operations --


def test_each_operation_writes_its_line(capture):
    log, stream = capture
    server, client = FakeSocket(), FakeSocket(peer=("198.51.100.7", 40000))
    log.accept(server, client)
    log.accept(server, client, ("203.0.113.1", 1))
    log.connect(client)
    log.connect(client, ("203.0.113.2", 25))
    log.send(client, b"EHLO x\r\n")
    log.recv(client, b"250 ok\r\n")
    log.shutdown(client, socket.SHUT_WR)
    log.shutdown(client, socket.SHUT_RD)
    log.shutdown(client, socket.SHUT_RDWR)
    log.proxyproto_success(client, ("203.0.113.9", 1234))
    log.proxyproto_local(client)
    log.close(client)
    s, c = str(server.fd), str(client.fd)
    assert parsed(stream) == [
        ("fd", s, "accept", {"clientfd": client.fd, "peer": ("198.51.100.7", 40000)}),
        ("fd", s, "accept", {"clientfd": client.fd, "peer": ("203.0.113.1", 1)}),
        ("fd", c, "connect", {"peer": ("198.51.100.7", 40000)}),
        ("fd", c, "connect", {"peer": ("203.0.113.2", 25)}),
        ("fd", c, "send", {"data": b"EHLO x\r\n"}),
        ("fd", c, "recv", {"data": b"250 ok\r\n"}),
        ("fd", c, "shutdown", {"how": "write"}),
        ("fd", c, "shutdown", {"how": "read"}),
        ("fd", c, "shutdown", {"how": "both"}),
        ("fd", c, "ppsuccess", {"peer": ("203.0.113.9", 1234)}),
        ("fd", c, "pplocal", {}),
        ("fd", c, "close", {}),
    ]
    assert {level for level, _ in lines(stream)} == {"DEBUG"}


def test_peer_gone_before_accept_is_logged_does_not_raise(capture):
    log, stream = capture
    client = FakeSocket(peer=None)
    log.accept(FakeSocket(), client)
    assert parsed(stream)[0][3]["peer"] is None


def test_proxyproto_invalid_is_a_warning(capture):
    log, stream = capture
    log.proxyproto_invalid(FakeSocket(), ValueError("bad header"))
    ((level, msg),) = lines(stream)
    assert level == "WARNING"
    assert parseline(msg)[3] == {"message": "bad header"}


def test_encrypt_logs_context_stats_and_cipher(capture):
    log, stream = capture

    class FakeTls(FakeSocket):
        def version(self):
            return "TLSv1.3"

        def cipher(self):
            return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)

    context = ssl.create_default_context()
    log.encrypt(FakeTls(), context)
    data = parsed(stream)[0][3]
    assert data["version"] == "TLSv1.3"
    assert data["cipher"] == "TLS_AES_256_GCM_SHA384"
    assert set(context.session_stats()) <= set(data)


def test_long_payloads_are_cut_and_flagged(capture):
    log, stream = capture
    log.send(FakeSocket(), b"x" * 5000)
    data = parsed(stream)[0][3]
    assert data == {"data": b"x" * SocketLogger.data_limit, "truncated": 5000}


def test_str_payloads_stay_str(capture):
    log, stream = capture
    log.recv(FakeSocket(), "AUTH PLAIN c2VjcmV0\r\n")
    assert parsed(stream)[0][3] == {"data": "AUTH PLAIN [redacted]\r\n"}


def test_disabled_logger_does_no_work():
    logger = logging.getLogger("test.socklog.quiet")
    logger.setLevel(logging.INFO)
    log = SocketLogger(logger)
    sock = FakeSocket()
    for _ in range(100):
        log.send(sock, b"data\r\n")
        log.recv(sock, b"data\r\n")
    # Returning before even asking for the descriptor shows nothing was formatted.
    assert sock.fileno_calls == 0


# ------------------------------------------------------------ error level --


def test_error_logs_at_error_by_default(capture):
    log, stream = capture
    assert socklog.socket_error_log_level == logging.ERROR
    sock = FakeSocket()
    log.error(sock, ConnectionResetError(104, "Connection reset by peer"), ("192.0.2.5", 25))
    log.error(None, TimeoutError("timed out"))
    (l1, m1), (l2, m2) = lines(stream)
    assert (l1, l2) == ("ERROR", "ERROR")
    assert parseline(m1) == (
        "fd",
        str(sock.fd),
        "error",
        {
            "message": "[Errno 104] Connection reset by peer",
            "args": (104, "Connection reset by peer"),
            "address": ("192.0.2.5", 25),
        },
    )
    assert parseline(m2)[:3] == ("fd", "none", "error")


def test_changing_socket_error_log_level_takes_effect_at_once(capture, monkeypatch):
    log, stream = capture  # created before the change, on purpose
    sock = FakeSocket()
    monkeypatch.setattr(socklog, "socket_error_log_level", logging.WARNING)
    log.error(sock, OSError("one"))
    monkeypatch.setattr(socklog, "socket_error_log_level", logging.INFO)
    log.error(sock, OSError("two"))
    assert [level for level, _ in lines(stream)] == ["WARNING", "INFO"]


def test_error_below_the_logger_level_is_dropped(capture, monkeypatch):
    log, stream = capture
    log.logger.setLevel(logging.WARNING)
    monkeypatch.setattr(socklog, "socket_error_log_level", logging.INFO)
    log.error(FakeSocket(), OSError("quiet"))
    assert stream.getvalue() == ""


# -------------------------------------------------------------- redaction --

USER, PASSWORD = "alice@example.com", "Tr0ub4dor&3-hunter2"
PLAIN_RESPONSE = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
LOGIN_USER = base64.b64encode(USER.encode()).decode()
LOGIN_PASSWORD = base64.b64encode(PASSWORD.encode()).decode()
SECRETS = [PASSWORD, PLAIN_RESPONSE, LOGIN_USER, LOGIN_PASSWORD]

# (direction from the server's point of view, bytes) for whole sessions.
PLAIN_INITIAL = [
    ("recv", b"EHLO client.example\r\n"),
    ("send", b"250-server.example\r\n250 AUTH PLAIN LOGIN\r\n"),
    ("recv", f"AUTH PLAIN {PLAIN_RESPONSE}\r\n".encode()),
    ("send", b"235 2.7.0 Authentication successful\r\n"),
    ("recv", b"MAIL FROM:<alice@example.com>\r\n"),
]
PLAIN_CONTINUED = [
    ("recv", b"auth plain\r\n"),
    ("send", b"334 \r\n"),
    ("recv", f"{PLAIN_RESPONSE}\r\n".encode()),
    ("send", b"235 2.7.0 Authentication successful\r\n"),
    ("recv", b"MAIL FROM:<alice@example.com>\r\n"),
]
LOGIN = [
    ("recv", b"AUTH LOGIN\r\n"),
    ("send", b"334 VXNlcm5hbWU6\r\n"),
    ("recv", f"{LOGIN_USER}\r\n".encode()),
    ("send", b"334 UGFzc3dvcmQ6\r\n"),
    ("recv", f"{LOGIN_PASSWORD}\r\n".encode()),
    ("send", b"535 5.7.8 Authentication credentials invalid\r\n"),
    ("recv", b"QUIT\r\n"),
]
LOGIN_INITIAL = [
    ("recv", f"AUTH LOGIN {LOGIN_USER}\r\n".encode()),
    ("send", b"334 UGFzc3dvcmQ6\r\n"),
    ("recv", f"{LOGIN_PASSWORD}\r\n".encode()),
    ("send", b"235 2.7.0 ok\r\n"),
    ("recv", b"QUIT\r\n"),
]
SESSIONS = {
    "plain": PLAIN_INITIAL,
    "plain-continued": PLAIN_CONTINUED,
    "login": LOGIN,
    "login-initial": LOGIN_INITIAL,
}


def play(log, sock, session, *, as_client=False, split=None):
    """Log a session; as a client the directions swap.  ``split`` cuts chunks."""
    for direction, data in session:
        if as_client:
            direction = "send" if direction == "recv" else "recv"
        method = log.recv if direction == "recv" else log.send
        pieces = [data] if split is None else split(data)
        for piece in pieces:
            method(sock, piece)


def logged_bytes(stream):
    return b"".join(data["data"] for *_, data in parsed(stream) if "data" in data)


def assert_no_secret(stream):
    text = stream.getvalue()
    for secret in SECRETS:
        assert secret not in text
        assert secret.encode() not in logged_bytes(stream)


@pytest.mark.parametrize("as_client", [False, True], ids=["server", "client"])
@pytest.mark.parametrize("name", list(SESSIONS))
def test_auth_secrets_never_reach_the_log(capture, name, as_client):
    log, stream = capture
    play(log, FakeSocket(), SESSIONS[name], as_client=as_client)
    assert_no_secret(stream)
    text = logged_bytes(stream)
    # ...while the rest of the conversation is still there to debug with.
    assert b"[redacted]" in text
    assert b"QUIT" in text or b"MAIL FROM:<alice@example.com>" in text
    assert b"AUTH" in text.upper()


def test_redacted_lines_look_like_this(capture):
    log, stream = capture
    play(log, FakeSocket(), LOGIN)
    assert [data["data"] for *_, data in parsed(stream)] == [
        b"AUTH LOGIN\r\n",
        b"334 VXNlcm5hbWU6\r\n",
        b"[redacted]\r\n",
        b"334 UGFzc3dvcmQ6\r\n",
        b"[redacted]\r\n",
        b"535 5.7.8 Authentication credentials invalid\r\n",
        b"QUIT\r\n",
    ]


def test_one_byte_per_chunk_is_still_redacted(capture):
    log, stream = capture
    for name in SESSIONS:
        play(
            log, FakeSocket(), SESSIONS[name], split=lambda data: [data[i : i + 1] for i in range(len(data))]
        )
    assert_no_secret(stream)
    assert b"MAIL FROM:<alice@example.com>" in logged_bytes(stream)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(list(SESSIONS)), cuts=st.lists(st.integers(1, 40), max_size=30), whole=st.booleans()
)
def test_any_chunking_is_redacted(name, cuts, whole):
    stream = io.StringIO()
    logger = logging.getLogger("test.socklog.chunks")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    log = SocketLogger(logger)
    session = SESSIONS[name]
    if whole:
        # All of the client's side arriving at once, without the replies.
        merged = b"".join(data for direction, data in session if direction == "recv")
        session = [("recv", merged)]

    def split(data):
        pieces, pos = [], 0
        for cut in cuts:
            if pos >= len(data):
                break
            pieces.append(data[pos : pos + cut])
            pos += cut
        return [*pieces, data[pos:]] if pos < len(data) else pieces

    sock = FakeSocket()
    play(log, sock, session, split=split)
    log.close(sock)
    assert_no_secret(stream)
    if not whole:
        assert logged_bytes(stream).endswith(session[-1][1][-6:])
    assert sock.fd not in socklog._states


def test_a_secret_line_split_across_many_recvs(capture):
    log, stream = capture
    sock = FakeSocket()
    log.recv(sock, b"AU")
    log.recv(sock, b"TH PL")
    log.recv(sock, f"AIN {PLAIN_RESPONSE[:5]}".encode())
    log.recv(sock, f"{PLAIN_RESPONSE[5:]}\r\nNOOP\r\n".encode())
    log.send(sock, b"235 2.7.0 ok\r\n")
    log.recv(sock, b"NOOP\r\n")
    assert_no_secret(stream)
    # Until the server's final reply, every client line counts as secret.
    assert logged_bytes(stream) == (
        b"AUTH PLAIN [redacted][redacted]\r\n[redacted]\r\n235 2.7.0 ok\r\nNOOP\r\n"
    )


def test_explicit_auth_begin_works_even_if_debug_was_off(capture):
    log, stream = capture
    sock = FakeSocket()
    log.logger.setLevel(logging.INFO)
    log.recv(sock, b"AUTH LOGIN\r\n")  # not seen: DEBUG is off
    log.auth_begin(sock)  # what the SMTP server does when AUTH starts
    log.send(sock, b"334 VXNlcm5hbWU6\r\n")
    log.logger.setLevel(logging.DEBUG)  # an operator turns DEBUG on mid-exchange
    log.recv(sock, f"{LOGIN_USER}\r\n".encode())
    log.send(sock, b"334 UGFzc3dvcmQ6\r\n")
    log.recv(sock, f"{LOGIN_PASSWORD}\r\n".encode())
    log.auth_end(sock)
    log.recv(sock, b"QUIT\r\n")
    assert_no_secret(stream)
    assert logged_bytes(stream).endswith(b"QUIT\r\n")
    log.close(sock)
    assert sock.fd not in socklog._states


def test_auth_text_inside_a_line_is_not_a_command(capture):
    log, stream = capture
    sock = FakeSocket()
    log.recv(sock, b"Subject: AUTH PLAIN is fine here\r\n")
    log.recv(sock, b"next line\r\n")
    assert logged_bytes(stream) == b"Subject: AUTH PLAIN is fine here\r\nnext line\r\n"
    assert sock.fd not in socklog._states


def test_close_and_accept_reset_a_reused_descriptor(capture):
    log, stream = capture
    sock = FakeSocket()
    log.recv(sock, b"AUTH LOGIN\r\n")
    assert socklog._states[sock.fd].active
    log.close(sock)
    assert sock.fd not in socklog._states
    log.recv(sock, b"AUTH LOGIN\r\n")
    log.accept(FakeSocket(), sock)
    log.recv(sock, b"hello\r\n")
    assert logged_bytes(stream).endswith(b"hello\r\n")


def test_loggers_share_redaction_state():
    stream = io.StringIO()
    one, two = getSocketLogger("test.socklog.share1"), getSocketLogger("test.socklog.share2")
    for log in (one, two):
        log.logger.handlers[:] = [logging.StreamHandler(stream)]
        log.logger.setLevel(logging.DEBUG)
        log.logger.propagate = False
    sock = FakeSocket()
    one.recv(sock, b"AUTH LOGIN\r\n")
    two.recv(sock, f"{LOGIN_USER}\r\n".encode())
    assert LOGIN_USER not in stream.getvalue()
    one.close(sock)
