"""SmtpConversation: a real SmtpEdge session over a socket pair, driven by the test."""

from __future__ import annotations

import sys

import gevent
import pytest

from slimta.edge.smtp import SmtpValidators
from slimta.policy import QueuePolicy
from slimta.queue import Queue, QueueError
from slimta.queue.dict import DictStorage
from slimta.smtp.reply import Reply
from slimta.testing import (
    ConversationClosed,
    HelperError,
    HelperTimeout,
    RecordingRelay,
    SmtpConversation,
    _tls,
)

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nHello\r\n.leading dot\r\n"


class Validators(SmtpValidators):
    def handle_rcpt(self, reply, recipient, params):
        if recipient.endswith("@blocked.test"):
            reply.code = "550"
            reply.message = "5.7.1 Recipient blocked"

    def handle_mail(self, reply, sender, params):
        if sender == "bye@example.com":
            reply.code = "421"
            reply.message = "4.7.0 Go away"
        if sender == "crash@example.com":
            raise RuntimeError("validator bug")
        if sender == "slow@example.com":
            gevent.sleep(30)

    def handle_auth(self, reply, creds):
        if creds.authcid != "alice" or not creds.check_secret("s3cret"):
            reply.code = "535"
            reply.message = "5.7.8 Bad credentials"


def test_a_transaction_with_a_refused_recipient(smtp_conversation):
    conv = smtp_conversation(Validators)
    assert conv.banner.code == "220"
    assert conv.ehlo("client.test").code == "250"
    assert "PIPELINING" in conv.extensions
    assert conv.mail("a@example.com").code == "250"
    assert conv.rcpt("b@example.com").code == "250"
    reply = conv.rcpt("c@blocked.test")
    assert (reply.code, reply.message) == ("550", "5.7.1 Recipient blocked")
    assert conv.data(MESSAGE).code == "250"
    [env] = conv.envelopes
    assert env.sender == "a@example.com"
    assert env.recipients == ["b@example.com"]
    assert env.headers["Subject"] == "hi"
    assert env.message == b"Hello\r\n.leading dot\r\n"
    assert env.client["ip"] == "192.0.2.1"
    assert env.client["name"] == "client.test"
    assert env.receiver == "mx.example.test"
    assert conv.session is not None
    assert conv.session.ehlo_as == "client.test"
    assert conv.quit().code == "221"
    assert conv.closed


def test_data_refused_before_354_is_returned(smtp_conversation):
    conv = smtp_conversation()
    conv.ehlo()
    reply = conv.data(MESSAGE)
    assert reply.code == "503"
    assert conv.envelopes == []


def test_bdat_rset_noop_and_custom_commands(smtp_conversation):
    conv = smtp_conversation(hostname="mx.other.test", client_address=("203.0.113.9", 1234))
    conv.ehlo()
    conv.mail("a@example.com")
    conv.rcpt("b@example.com")
    assert conv.bdat(MESSAGE).code == "250"
    assert conv.rset().code == "250"
    assert conv.noop().code == "250"
    assert conv.command("VRFY", "someone").code == "500"
    assert conv.mail("a@example.com", {"SIZE": "100", "BODY": "8BITMIME"}).code == "250"
    assert conv.envelopes[0].client["ip"] == "203.0.113.9"
    assert conv.envelopes[0].receiver == "mx.other.test"


def test_starttls_then_auth(smtp_conversation):
    conv = smtp_conversation(Validators, tls=True, auth=True)
    conv.ehlo()
    assert "STARTTLS" in conv.extensions
    assert conv.auth("alice", "s3cret", "PLAIN").code == "538"  # no cleartext PLAIN
    assert conv.starttls().code == "220"
    assert conv.encrypted
    conv.ehlo()
    assert "STARTTLS" not in conv.extensions
    assert conv.auth("alice", "wrong", "LOGIN").code == "535"
    assert conv.auth("alice", "s3cret", "PLAIN").code == "235"
    assert conv.session.auth == ("alice", None)
    conv.mail("alice@example.com")
    conv.rcpt("b@example.com")
    conv.data(MESSAGE)
    assert conv.envelopes[0].client["protocol"] == "ESMTPSA"
    assert conv.envelopes[0].client["auth"] == "alice"


def test_cram_md5_over_cleartext(smtp_conversation):
    conv = smtp_conversation(Validators, auth=["CRAM-MD5"])
    conv.ehlo()
    assert conv.auth("alice", "s3cret").code == "235"


def test_tls_immediately(smtp_conversation):
    conv = smtp_conversation(tls_immediately=True)
    assert conv.encrypted
    assert conv.banner.code == "220"
    conv.ehlo()
    assert "STARTTLS" not in conv.extensions


def test_raw_bytes_and_pipelined_replies(smtp_conversation):
    conv = smtp_conversation()
    conv.ehlo()
    replies = conv.raw(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nNOOP\r\n", replies=3)
    assert [r.code for r in replies] == ["250", "250", "250"]
    assert conv.raw(b"MAIL FROM:<bad\r\n")[0].code == "501"
    assert conv.raw(b"", replies=0) == []


def test_waiting_for_a_reply_that_never_comes_times_out(smtp_conversation):
    conv = smtp_conversation(timeout=0.2)
    conv.ehlo()
    with pytest.raises(HelperTimeout, match=r"2 replies to raw data within 0\.2 s"):
        conv.raw(b"NOOP\r\n", replies=2)
    with pytest.raises(ConversationClosed, match="helper timeout"):
        conv.noop()


def test_a_blocking_validator_times_out_instead_of_hanging(smtp_conversation):
    conv = smtp_conversation(Validators, timeout=0.2)
    conv.ehlo()
    with pytest.raises(HelperTimeout, match="no reply to MAIL"):
        conv.mail("slow@example.com")


def test_calls_after_quit_or_close_say_so(smtp_conversation):
    conv = smtp_conversation()
    conv.quit()
    with pytest.raises(ConversationClosed, match="cannot send EHLO: the conversation was closed by quit"):
        conv.ehlo()
    other = smtp_conversation()
    other.close()
    other.close()  # closing twice is harmless
    with pytest.raises(ConversationClosed, match=r"closed by close\(\)"):
        other.mail("a@example.com")


def test_the_server_closing_ends_the_conversation(smtp_conversation):
    conv = smtp_conversation(Validators)
    conv.ehlo()
    assert conv.mail("bye@example.com").code == "421"
    with pytest.raises(ConversationClosed, match="server closed the connection; the last reply was 421"):
        conv.rcpt("b@example.com")
    with pytest.raises(ConversationClosed, match="closed by the server"):
        conv.noop()


def test_an_exception_in_a_validator_is_raised_in_the_test(smtp_conversation):
    conv = smtp_conversation(Validators)
    conv.ehlo()
    with pytest.raises(RuntimeError, match="validator bug") as info:
        conv.mail("crash@example.com")
    assert "Validators.handle_mail" in info.value.__notes__[0]
    quiet = smtp_conversation(Validators, raise_errors=False)
    quiet.ehlo()
    assert quiet.mail("crash@example.com").code == "421"
    assert isinstance(quiet.server_errors[0], RuntimeError)


def test_a_queue_error_is_answered_451(smtp_conversation):
    conv = smtp_conversation()
    conv.queue.error = QueueError("disk full")
    conv.ehlo()
    conv.mail("a@example.com")
    conv.rcpt("b@example.com")
    reply = conv.data(MESSAGE)
    assert reply.code == "451"
    custom = Reply("452", "4.3.1 Insufficient system storage")
    conv.queue.error = QueueError("full", custom)
    conv.mail("a@example.com")
    conv.rcpt("b@example.com")
    assert conv.data(MESSAGE) == custom


def test_with_a_real_queue_and_policy(smtp_conversation):
    class Rewrite(QueuePolicy):
        def apply(self, envelope):
            envelope.recipients = [r.replace("@old.test", "@new.test") for r in envelope.recipients]

    relay = RecordingRelay()
    queue = Queue(DictStorage(), relay)
    queue.add_policy(Rewrite())
    queue.start()
    try:
        conv = smtp_conversation(queue=queue)
        conv.ehlo()
        conv.mail("a@example.com")
        conv.rcpt("b@old.test")
        reply = conv.data(MESSAGE)
        assert reply.code == "250"
        assert "queued as" in reply.message
        relay.wait_for(1)
        assert relay.attempts[0].recipients == ("b@new.test",)
    finally:
        queue.kill()


def test_max_size_is_enforced(smtp_conversation):
    conv = smtp_conversation(max_size=20)
    conv.ehlo()
    assert conv.extensions.getparam("SIZE") == "20"
    conv.mail("a@example.com")
    conv.rcpt("b@example.com")
    assert conv.data(MESSAGE).code == "552"


def test_tls_without_trustme_explains(monkeypatch):
    monkeypatch.setitem(sys.modules, "trustme", None)
    _tls._ca.cache_clear()
    _tls._issued.cache_clear()
    try:
        with pytest.raises(HelperError, match="trustme"):
            SmtpConversation(tls=True, hostname="no-trustme.test")
    finally:
        _tls._ca.cache_clear()
        _tls._issued.cache_clear()


def test_context_manager_closes():
    with SmtpConversation() as conv:
        conv.ehlo()
    assert conv.closed
