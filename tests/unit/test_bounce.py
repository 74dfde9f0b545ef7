"""Tests for slimta.bounce (RFC 3464 notices) and slimta.bounce.dsn (RFC 3461)."""

from __future__ import annotations

import email
import json
from email.message import Message
from email.policy import compat32

import pytest

from slimta.bounce import Bounce
from slimta.bounce.dsn import (
    DsnError,
    EnvelopeDsn,
    RecipientDsn,
    get_dsn,
    get_recipient_dsn,
    mail_params,
    parse_mail_params,
    parse_rcpt_params,
    rcpt_params,
    recipients_to_notify,
    return_headers_only,
    set_dsn,
    set_recipient_dsn,
    should_bounce,
    xtext_decode,
    xtext_encode,
)
from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.smtp.reply import Reply
from slimta.util.bytesformat import BytesFormat

ORIGINAL = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nhello there\r\n"


def make_env(
    sender: str = "alice@example.com", rcpts: list[str] | None = None, data: bytes = ORIGINAL
) -> Envelope:
    env = Envelope(sender, rcpts or ["bob@example.net"])
    env.parse(data)
    env.timestamp = 1700000000.0
    env.receiver = "mx.example.org"
    env.client.update(ip="192.0.2.7", name="mail.example.com", host="mail.example.com", protocol="ESMTPS")
    return env


def parse(bounce: Bounce) -> Message:
    header_data, body = bounce.flatten()
    return email.message_from_bytes(header_data + body, policy=compat32)


def parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    assert isinstance(payload, list)
    return payload


def status_groups(msg: Message) -> list[Message]:
    """The message/delivery-status part's field groups (per-message first)."""
    report = parts(msg)[1]
    assert report.get_content_type() == "message/delivery-status"
    groups = report.get_payload()
    assert isinstance(groups, list)
    return groups


# -- structure ------------------------------------------------------------


def test_failure_report_structure() -> None:
    env = make_env(rcpts=["bob@example.net", "carol@example.net"])
    reply = Reply("550", "5.1.1 No such user", address=("198.51.100.9", 25))
    bounce = Bounce(env, reply)
    assert bounce.sender == ""
    assert bounce.recipients == ["alice@example.com"]
    assert bounce.receiver == "mx.example.org"
    assert bounce.client["name"] == "postmaster"
    assert bounce.timestamp is not None

    msg = parse(bounce)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "alice@example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert "Failure" in msg["Subject"]
    text, _report, original = parts(msg)
    assert text.get_content_type() == "text/plain"
    body = text.get_payload()
    assert "bob@example.net" in body
    assert "carol@example.net" in body
    assert "550 5.1.1 No such user" in body

    per_message, *per_rcpt = status_groups(msg)
    assert per_message["Reporting-MTA"] == "dns; mx.example.org"
    assert per_message["Arrival-Date"] == email.utils.formatdate(1700000000.0, localtime=True)
    assert per_message["Received-From-MTA"] == "dns; mail.example.com (192.0.2.7)"
    assert [g["Final-Recipient"] for g in per_rcpt] == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.net",
    ]
    for group in per_rcpt:
        assert group["Action"] == "failed"
        assert group["Status"] == "5.1.1"
        assert group["Remote-MTA"] == "dns; [198.51.100.9]"
        assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"

    assert original.get_content_type() == "message/rfc822"
    inner = original.get_payload()[0]
    assert inner["Subject"] == "hello"
    assert inner.get_payload() == "hello there\r\n"


def test_status_comes_from_the_enhanced_status_code() -> None:
    msg = parse(Bounce(make_env(), Reply("552", "5.2.2 Mailbox full")))
    assert status_groups(msg)[1]["Status"] == "5.2.2"
    # Without an explicit enhanced code the class follows the reply code.
    msg = parse(Bounce(make_env(), Reply("554", "Rejected")))
    group = status_groups(msg)[1]
    assert group["Status"] == "5.0.0"
    assert "Remote-MTA" not in group


def test_remote_mta_as_host_name() -> None:
    msg = parse(Bounce(make_env(), Reply("550", "5.7.1 Denied", address="mx1.example.net")))
    assert status_groups(msg)[1]["Remote-MTA"] == "dns; mx1.example.net"


def test_headers_only_attaches_rfc822_headers() -> None:
    bounce = Bounce(make_env(), Reply("550", "5.0.0 No"), headers_only=True)
    assert bounce.headers_only is True
    original = parts(parse(bounce))[2]
    assert original.get_content_type() == "text/rfc822-headers"
    payload = original.get_payload()
    assert "Subject: hello" in payload
    assert "hello there" not in payload


def test_multiline_reply_is_one_diagnostic_line() -> None:
    reply = Reply("550", "5.1.1 first line\r\nsecond line")
    group = status_groups(parse(Bounce(make_env(), reply)))[1]
    assert group["Diagnostic-Code"] == "smtp; 550 5.1.1 first line second line"


# -- header injection -------------------------------------------------------


def test_sender_with_crlf_cannot_inject_a_header() -> None:
    env = make_env(sender="alice@example.com\r\nBcc: victim@example.org")
    bounce = Bounce(env, Reply("550", "5.1.1 No"))
    header_data, body = bounce.flatten()
    assert b"\r\nBcc:" not in header_data + body
    msg = parse(bounce)
    assert msg["Bcc"] is None
    assert all(part["Bcc"] is None for part in msg.walk())
    assert "\n" not in msg["To"]
    assert "\r" not in msg["To"]
    # The envelope recipient cannot inject an SMTP command either.
    assert "\r" not in bounce.recipients[0]
    assert "\n" not in bounce.recipients[0]


def test_recipient_and_reply_with_control_characters_are_neutralised() -> None:
    env = make_env(rcpts=["bob@example.net\r\nX-Evil: 1", "nul\x00@example.net"])
    reply = Reply("550", "5.1.1 bad\rX-Evil: 2\x00")
    reply.address = ("mx\r\nX-Evil: 3", 25)
    bounce = Bounce(env, reply)
    header_data, body = bounce.flatten()
    data = header_data + body
    assert b"\nX-Evil" not in data
    assert b"\rX-Evil" not in data
    assert b"\x00" not in data
    groups = status_groups(parse(bounce))
    assert all(group["X-Evil"] is None for group in groups)
    assert groups[1]["Final-Recipient"].startswith("utf-8; bob@example.net\\x{D}\\x{A}X-Evil:")
    assert groups[2]["Final-Recipient"] == "utf-8; nul\\x{0}@example.net"


def test_non_ascii_recipient_uses_utf8_address_type() -> None:
    env = make_env(rcpts=["jösé@example.net"])
    group = status_groups(parse(Bounce(env, Reply("550", "5.1.1 No"))))[1]
    assert group["Final-Recipient"] == "utf-8; j\\x{F6}s\\x{E9}@example.net"


# -- size cap ---------------------------------------------------------------


def test_large_original_is_returned_as_headers_only() -> None:
    big = ORIGINAL + (b"y" * 78 + b"\r\n") * 1000
    bounce = Bounce(make_env(data=big), Reply("550", "5.0.0 No"))
    assert bounce.headers_only is True
    header_data, body = bounce.flatten()
    assert len(header_data) + len(body) < 10000
    msg = parse(bounce)
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    assert "header section" in parts(msg)[0].get_payload()


def test_small_original_under_the_limit_is_kept_whole() -> None:
    data = ORIGINAL + b"z" * 40000 + b"\r\n"
    bounce = Bounce(make_env(data=data), Reply("550", "5.0.0 No"))
    assert bounce.headers_only is False
    _header_data, body = bounce.flatten()
    assert b"z" * 40000 in body


def test_huge_header_section_is_cut_at_a_field_boundary() -> None:
    fields = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 60) for i in range(2000))
    bounce = Bounce(make_env(data=fields + b"\r\nbody\r\n"), Reply("550", "5.0.0 No"))
    original = parts(parse(bounce))[2].get_payload()
    assert len(original) <= Bounce.size_limit + 2  # type: ignore[operator]
    assert original.rstrip("\r\n").endswith("f" * 60)


def test_size_limit_can_be_changed_in_a_subclass() -> None:
    class Tiny(Bounce):
        size_limit = 10

    class Unlimited(Bounce):
        size_limit = None

    data = ORIGINAL + b"q" * 60000
    assert Tiny(make_env(), Reply("550", "5.0.0 No")).headers_only is True
    assert Unlimited(make_env(data=data), Reply("550", "5.0.0 No")).headers_only is False


# -- delay and success notices ---------------------------------------------


@pytest.mark.parametrize(
    ("action", "code", "status", "word"),
    [("delayed", "451", "4.4.1", "Delay"), ("delivered", "250", "2.0.0", "Success")],
)
def test_delay_and_success_notices(action: str, code: str, status: str, word: str) -> None:
    reply = Reply(code, f"{status} Something")
    msg = parse(Bounce(make_env(), reply, action=action))
    assert word in msg["Subject"]
    group = status_groups(msg)[1]
    assert group["Action"] == action
    assert group["Status"] == status


def test_action_class_attribute_and_unknown_action() -> None:
    class DelayNotice(Bounce):
        action = "delayed"

    msg = parse(DelayNotice(make_env(), Reply("421", "4.4.2 Timeout")))
    assert status_groups(msg)[1]["Action"] == "delayed"
    with pytest.raises(DsnError):
        Bounce(make_env(), Reply("550", "No"), action="exploded")


# -- 4.0 class attributes ------------------------------------------------------


def test_custom_templates_as_str_and_recipient_join() -> None:
    class Custom(Bounce):
        header_template = (
            "From: postmaster\nTo: {sender}\nSubject: failed {code}\n\nFailed: {recipients}\n{message}\n"
        )
        footer_template = "\n-- end\n"
        recipient_join = ", "
        client = {"name": "bouncer", "ip": "10.0.0.1", "host": "bouncer.local"}
        receiver = "bounces.example.org"

    bounce = Custom(make_env(rcpts=["a@x.example", "b@y.example"]), Reply("550", "5.1.1 gone"))
    _header_data, body = bounce.flatten()
    assert bounce.headers is not None
    assert bounce.headers["Subject"] == "failed 550"
    assert body.startswith(b"Failed: a@x.example, b@y.example\r\n5.1.1 gone\r\n")
    assert body.endswith(b"\r\n-- end\r\n")
    assert bounce.client["name"] == "bouncer"
    assert bounce.receiver == "bounces.example.org"
    assert isinstance(Bounce.header_template, BytesFormat)


def test_eight_bit_original_declares_8bit() -> None:
    env = make_env(data=b"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n")
    msg = parse(Bounce(env, Reply("550", "5.0.0 No")))
    assert msg["Content-Transfer-Encoding"] == "8bit"
    assert parse(Bounce(make_env(), Reply("550", "5.0.0 No")))["Content-Transfer-Encoding"] == "7bit"


# -- DSN requests (RFC 3461) --------------------------------------------------


def test_xtext_round_trip() -> None:
    assert xtext_encode("a+b=c d\u00e9") == "a+2Bb+3Dc+20d+C3+A9"
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(DsnError):
        xtext_decode("bad+zz")
    with pytest.raises(DsnError):
        xtext_decode("has space")


def test_parse_mail_params() -> None:
    dsn = parse_mail_params({"ret": "hdrs", "ENVID": "QQ314159+2Bx", "SIZE": "100"})
    assert dsn == EnvelopeDsn(ret="HDRS", envid="QQ314159+x")
    assert parse_mail_params({}) == EnvelopeDsn()
    assert parse_mail_params(None) == EnvelopeDsn()
    for bad in ({"RET": "ALL"}, {"RET": None}, {"ENVID": ""}, {"ENVID": "x" * 101}, {"ENVID": "a+0Db"}):
        with pytest.raises(DsnError) as info:
            parse_mail_params(bad)
        assert isinstance(info.value, SlimtaError)


def test_parse_rcpt_params() -> None:
    assert parse_rcpt_params({"SIZE": "1"}) is None
    rdsn = parse_rcpt_params({"notify": "success,Delay", "orcpt": "rfc822;bob+2Bx@example.net"})
    assert rdsn == RecipientDsn(notify=frozenset({"SUCCESS", "DELAY"}), orcpt=("rfc822", "bob+x@example.net"))
    assert parse_rcpt_params({"NOTIFY": "NEVER"}) == RecipientDsn(notify=frozenset({"NEVER"}))
    bad_values = [
        {"NOTIFY": "NEVER,SUCCESS"},
        {"NOTIFY": "SOMETIMES"},
        {"NOTIFY": ""},
        {"ORCPT": "no-semicolon"},
        {"ORCPT": ";x@y"},
        {"ORCPT": "rfc822;"},
        {"ORCPT": "rfc822;a+0D+0ABcc:x@y"},
    ]
    for bad in bad_values:
        with pytest.raises(DsnError):
            parse_rcpt_params(bad)


def dsn_env(notify: str | None, sender: str = "alice@example.com") -> Envelope:
    env = make_env(sender=sender)
    set_dsn(env, parse_mail_params({"RET": "HDRS", "ENVID": "ID42"}))
    params = {} if notify is None else {"NOTIFY": notify}
    set_recipient_dsn(
        env, "bob@example.net", parse_rcpt_params({**params, "ORCPT": "rfc822;Bob@Example.NET"})
    )
    return env


@pytest.mark.parametrize(
    ("notify", "failed", "delayed", "delivered"),
    [
        (None, True, False, False),
        ("NEVER", False, False, False),
        ("FAILURE", True, False, False),
        ("DELAY", False, True, False),
        ("SUCCESS", False, False, True),
        ("SUCCESS,FAILURE,DELAY", True, True, True),
    ],
)
def test_should_bounce_honours_notify(
    notify: str | None, failed: bool, delayed: bool, delivered: bool
) -> None:
    env = dsn_env(notify)
    assert should_bounce(env, "bob@example.net", "failed") is failed
    assert should_bounce(env, "bob@example.net", "delayed") is delayed
    assert should_bounce(env, "bob@example.net", "delivered") is delivered
    assert should_bounce(env, "bob@example.net", "relayed") is delivered


def test_should_bounce_defaults_and_null_sender() -> None:
    plain = make_env()
    assert should_bounce(plain, "bob@example.net") is True
    assert should_bounce(plain, "bob@example.net", "delayed") is False
    for sender in ("", None, "<>"):
        env = dsn_env("SUCCESS,FAILURE,DELAY", sender="x")
        env.sender = sender
        assert should_bounce(env, "bob@example.net", "failed") is False
    with pytest.raises(DsnError):
        should_bounce(plain, "bob@example.net", "bogus")


def test_recipients_to_notify_and_case_insensitive_lookup() -> None:
    env = make_env(rcpts=["bob@example.net", "carol@example.net"])
    set_recipient_dsn(env, "Carol@Example.net", RecipientDsn(notify=frozenset({"NEVER"})))
    assert recipients_to_notify(env, env.recipients) == ["bob@example.net"]
    assert get_recipient_dsn(env, "carol@example.net") is not None
    set_recipient_dsn(env, "Carol@Example.net", None)
    assert recipients_to_notify(env, env.recipients) == env.recipients


def test_bounce_uses_stored_dsn_data() -> None:
    env = dsn_env("FAILURE")
    assert return_headers_only(env) is True
    bounce = Bounce(env, Reply("550", "5.1.1 No"))
    assert bounce.headers_only is True
    msg = parse(bounce)
    assert parts(msg)[2].get_content_type() == "text/rfc822-headers"
    per_message, group = status_groups(msg)
    assert per_message["Original-Envelope-Id"] == "ID42"
    assert group["Original-Recipient"] == "rfc822; Bob@Example.NET"


def test_params_for_relaying_and_storage_round_trip() -> None:
    env = dsn_env("DELAY,SUCCESS")
    env.dsn.envid = "a=b+c"  # type: ignore[attr-defined]
    assert mail_params(env) == {"RET": "HDRS", "ENVID": "a+3Db+2Bc"}
    assert rcpt_params(env, "bob@example.net") == {
        "NOTIFY": "SUCCESS,DELAY",
        "ORCPT": "rfc822;Bob@Example.NET",
    }
    assert rcpt_params(env, "nobody@example.net") == {}
    assert mail_params(make_env()) == {}

    stored = json.loads(json.dumps(get_dsn(env).to_dict()))  # type: ignore[union-attr]
    assert EnvelopeDsn.from_dict(stored) == get_dsn(env)
    with pytest.raises(DsnError):
        EnvelopeDsn.from_dict({"recipients": {"a": {"orcpt": [1]}}})

    copied = env.copy(["bob@example.net"])
    assert get_dsn(copied) == get_dsn(env)
    assert get_dsn(copied) is not get_dsn(env)
    set_dsn(env, None)
    assert get_dsn(env) is None
