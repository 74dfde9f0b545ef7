"""SubprocessLogger, QueueStorageLogger and HttpLogger."""

from __future__ import annotations

import logging

import pytest

from slimta.logging import getHttpLogger, getQueueStorageLogger, getSubprocessLogger, parseline
from slimta.logging.subprocess import SubprocessLogger


@pytest.fixture
def records(caplog):
    caplog.set_level(logging.DEBUG, logger="test.logothers")

    def parsed():
        return [parseline(r.getMessage()) for r in caplog.records if r.name == "test.logothers"]

    return parsed


class FakeProcess:
    pid = 4242
    returncode = 3


class FakeEnvelope:
    sender = "sender@example.com"
    recipients = ["rcpt1@example.com", "rcpt2@example.net"]


def test_subprocess_lines(records):
    log = getSubprocessLogger("test.logothers")
    proc = FakeProcess()
    log.popen(proc, ["/usr/bin/maildrop", "-f", "a@b"])
    log.stdio(proc, b"x" * 5000, "", None)
    log.exit(proc)
    assert records() == [
        ("pid", "4242", "popen", {"args": ["/usr/bin/maildrop", "-f", "a@b"]}),
        ("pid", "4242", "stdio", {"stdin": b"x" * SubprocessLogger.data_limit, "stdout": "", "stderr": None}),
        ("pid", "4242", "exit", {"returncode": 3}),
    ]


def test_queuestorage_lines(records):
    log = getQueueStorageLogger("test.logothers")
    log.write("4f1c0a", FakeEnvelope())
    log.update_meta("4f1c0a", attempts=2, timestamp=1700000000.5)
    log.remove("4f1c0a")
    assert records() == [
        ("queue", "4f1c0a", "write", {"sender": "sender@example.com", "recipients": FakeEnvelope.recipients}),
        ("queue", "4f1c0a", "meta", {"attempts": 2, "timestamp": 1700000000.5}),
        ("queue", "4f1c0a", "remove", {}),
    ]


def test_http_client_lines_redact_credentials(records):
    log = getHttpLogger("test.logothers")
    conn = object()
    log.request(
        conn,
        "POST",
        "/deliver",
        [("Content-Type", "message/rfc822"), ("Authorization", "Basic dXNlcjpzM2NyZXQ=")],
    )
    log.response(conn, "200 OK", [("Set-Cookie", "session=abc123"), ("X-Id", "7")])
    request, response = records()
    assert request == (
        "http",
        str(id(conn)),
        "client_request",
        {
            "method": "POST",
            "path": "/deliver",
            "headers": [("Content-Type", "message/rfc822"), ("Authorization", "<redacted>")],
        },
    )
    assert response == (
        "http",
        str(id(conn)),
        "client_response",
        {"status": "200 OK", "headers": [("Set-Cookie", "<redacted>"), ("X-Id", "7")]},
    )


def test_http_wsgi_lines(records, caplog):
    log = getHttpLogger("test.logothers")
    environ = {
        "REQUEST_METHOD": "post",
        "PATH_INFO": "/mail",
        "CONTENT_TYPE": "message/rfc822",
        "CONTENT_LENGTH": "12",
        "HTTP_X_EHLO": "client.example",
        "HTTP_PROXY_AUTHORIZATION": "Basic c2VjcmV0",
        "HTTP_COOKIE": "token=s3cret",
        "wsgi.version": (1, 0),
    }
    log.wsgi_request(environ)
    log.wsgi_response(environ, "250 Ok", [("X-Reply", "250 2.6.0 Ok")])
    request, response = records()
    assert request[:3] == ("http", str(id(environ)), "server_request")
    assert request[3]["method"] == "POST"
    assert request[3]["path"] == "/mail"
    assert sorted(request[3]["headers"]) == [
        ("Content-Length", "12"),
        ("Content-Type", "message/rfc822"),
        ("Cookie", "<redacted>"),
        ("Proxy-Authorization", "<redacted>"),
        ("X-Ehlo", "client.example"),
    ]
    assert response == (
        "http",
        str(id(environ)),
        "server_response",
        {"status": "250 Ok", "headers": [("X-Reply", "250 2.6.0 Ok")]},
    )
    assert "s3cret" not in caplog.text
    assert "c2VjcmV0" not in caplog.text


def test_disabled_loggers_touch_nothing(caplog):
    caplog.set_level(logging.INFO, logger="test.logothers.quiet")

    class Exploding:
        def __getattr__(self, name):
            raise AssertionError(f"{name} was read while DEBUG is off")

    boom = Exploding()
    getSubprocessLogger("test.logothers.quiet").stdio(boom, boom, boom, boom)
    getHttpLogger("test.logothers.quiet").wsgi_request(boom)  # type: ignore[arg-type]
    getQueueStorageLogger("test.logothers.quiet").remove("x")
    assert caplog.records == []


def test_logging_log_module_forwards_to_logline():
    from slimta import logging as slimta_logging
    from slimta.logging import log

    assert log.logline is slimta_logging.logline
    assert len(log.log_repr.repr("x" * 1000)) < 110
