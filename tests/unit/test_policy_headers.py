"""Tests for slimta.policy.headers."""

from __future__ import annotations

import email.utils
import re
import time

import pytest

import slimta
from slimta.envelope import Envelope
from slimta.policy.headers import AddDateHeader, AddMessageIdHeader, AddReceivedHeader

TS = 1700000000.0


def make_env(data: bytes = b"Subject: hi\r\n\r\nbody\r\n", rcpts: list[str] | None = None) -> Envelope:
    env = Envelope("sender@example.com", rcpts if rcpts is not None else ["rcpt@example.net"])
    env.parse(data)
    env.timestamp = TS
    env.receiver = "mx.example.org"
    env.client.update(ip="192.0.2.7", host="mail.example.com", name="mail.example.com", protocol="ESMTP")
    return env


def received(env: Envelope) -> str:
    assert env.headers is not None
    value = env.headers["Received"]
    assert isinstance(value, str)
    return value


# -- Date and Message-Id ------------------------------------------------------------


def test_add_date_header_when_missing() -> None:
    env = make_env()
    AddDateHeader().apply(env)
    assert env.headers is not None
    date = env.headers["Date"]
    assert email.utils.parsedate_to_datetime(date).timestamp() == TS
    assert re.search(r" [+-]\d{4}$", date)


def test_add_date_header_keeps_existing() -> None:
    env = make_env(b"Date: Mon, 1 Jan 2001 00:00:00 +0000\r\n\r\nx")
    AddDateHeader().apply(env)
    assert env.headers is not None
    assert env.headers.get_all("Date") == ["Mon, 1 Jan 2001 00:00:00 +0000"]


def test_add_date_header_build_date_override() -> None:
    class Fixed(AddDateHeader):
        def build_date(self, timestamp: float) -> str:
            return f"ts={timestamp:.0f}"

    env = make_env()
    Fixed().apply(env)
    assert env.headers is not None
    assert env.headers["Date"] == "ts=1700000000"


def test_add_message_id_header() -> None:
    env = make_env()
    AddMessageIdHeader("mx.example.org").apply(env)
    assert env.headers is not None
    assert re.fullmatch(r"<[0-9a-f]{32}\.1700000000@mx\.example\.org>", env.headers["Message-Id"])

    other = make_env()
    AddMessageIdHeader("mx.example.org").apply(other)
    assert other.headers is not None
    assert other.headers["Message-Id"] != env.headers["Message-Id"]


def test_add_message_id_keeps_existing_and_default_hostname() -> None:
    env = make_env(b"Message-ID: <abc@x>\r\n\r\nbody")
    AddMessageIdHeader().apply(env)
    assert env.headers is not None
    assert env.headers.get_all("Message-Id") == ["<abc@x>"]
    assert AddMessageIdHeader().hostname


def test_policies_work_on_envelope_without_headers() -> None:
    env = Envelope("a@x", ["b@y"])
    env.timestamp = TS
    AddDateHeader().apply(env)
    AddMessageIdHeader("h.example").apply(env)
    AddReceivedHeader().apply(env)
    assert env.headers is not None
    assert [name for name, _ in env.headers.items()] == ["Received", "Date", "Message-Id"]


# -- Received ---------------------------------------------------------------------


def test_received_header_layout_and_position() -> None:
    env = make_env()
    AddReceivedHeader().apply(env)
    value = received(env)
    pattern = (
        r"from mail\.example\.com \(mail\.example\.com \[192\.0\.2\.7\]\) "
        rf"by mx\.example\.org \(slimta {re.escape(slimta.__version__)}\) "
        r"with ESMTP id [0-9a-f]{32} for <rcpt@example\.net>; "
        r"Tue, 14 Nov 2023 22:13:20 \+0000"
    )
    assert re.fullmatch(pattern, value), value
    header_data, _ = env.flatten()
    assert header_data.startswith(b"Received: from mail.example.com")


@pytest.mark.parametrize(
    ("protocol", "auth", "expected"),
    [
        ("ESMTPS", None, "with ESMTPS"),
        ("ESMTPSA", "joe", "with ESMTPSA"),
        ("ESMTPS", "joe", "with ESMTPSA"),
        ("ESMTP", "joe", "with ESMTPA"),
        ("SMTP", None, "with SMTP"),
        ("LMTP", None, "with LMTP"),
    ],
)
def test_received_records_tls_and_auth(protocol: str, auth: str | None, expected: str) -> None:
    env = make_env()
    env.client.update(protocol=protocol, auth=auth)
    AddReceivedHeader().apply(env)
    assert f" {expected} id " in received(env)


def test_received_omits_bad_protocol_and_for_with_several_recipients() -> None:
    env = make_env(rcpts=["a@x", "bcc@y"])
    env.client["protocol"] = "ESMTP\r\nX-Evil: 1"
    AddReceivedHeader().apply(env)
    value = received(env)
    assert " with " not in value
    assert " for " not in value
    assert "bcc@y" not in value


def test_received_never_carries_control_characters_from_the_client() -> None:
    env = make_env()
    env.client.update(name="evil\r\nBcc: victim@example.org (x)", host="ptr\nX-Evil: 2", ip="not-an-ip\r\n")
    env.receiver = "mx\r\nX-Evil: 3"
    AddReceivedHeader().apply(env)
    value = received(env)
    assert re.fullmatch(r"[\x20-\x7e]+", value), value
    assert value.startswith("from unknown (unknown [unknown] helo=evil??Bcc:?victim@example.org??x?) by ")
    header_data, _ = env.flatten()
    parsed = email.message_from_bytes(header_data)
    assert parsed["Bcc"] is None
    assert parsed["X-Evil"] is None


def test_received_ipv6_and_address_literal_ehlo() -> None:
    env = make_env()
    env.client.update(name="[IPv6:2001:db8::1]", host=None, ip="2001:db8::1")
    AddReceivedHeader().apply(env)
    assert received(env).startswith("from [IPv6:2001:db8::1] (unknown [IPv6:2001:db8::1]) by ")


def test_received_date_format_and_id_override() -> None:
    class MyId(AddReceivedHeader):
        def build_id(self, envelope: Envelope) -> str:
            return "Q123"

    env = make_env()
    MyId(date_format="%Y-%m-%d").apply(env)
    value = received(env)
    assert value.endswith(" id Q123 for <rcpt@example.net>; 2023-11-14")


def test_received_is_prepended_above_existing_trace() -> None:
    env = make_env(b"Received: from older\r\nSubject: hi\r\n\r\nbody")
    env.timestamp = None
    before = time.time()
    AddReceivedHeader().apply(env)
    assert env.headers is not None
    values = env.headers.get_all("Received")
    assert values is not None
    assert values[1] == "from older"
    assert values[0].startswith("from mail.example.com")
    stamp = email.utils.parsedate_to_datetime(values[0].rsplit("; ", 1)[1]).timestamp()
    assert before - 1 <= stamp <= time.time() + 1
