"""AUTH (RFC 4954): PLAIN, LOGIN, CRAM-MD5, TLS requirement, failures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import smtplib
import time

import pytest
from passlib.hash import sha512_crypt

from slimta.edge.smtp import SmtpValidators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MESSAGE = b"Subject: auth\r\n\r\nbody\r\n"
# Few rounds: verifying must not hold the hub for long in a test.
USERS = {"alice": "plain-pw", "bob": sha512_crypt.using(rounds=5000).hash("hashed-pw")}


def check_users(self, reply, creds):
    if not creds.check_secret(USERS.get(creds.authcid)):
        reply.code = "535"
        reply.message = "5.7.8 Bad credentials"


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


@pytest.fixture
def auth_edge(edge_factory, stdlib_server_context):
    return edge_factory(context=stdlib_server_context, auth=True, overrides={"auth": check_users})


def _tls_smtp(edge, client_context) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", edge.port, timeout=5)
    client.starttls(context=client_context)
    client.ehlo("client.test")
    return client


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN"])
def test_insecure_mechanism_refused_in_cleartext(auth_edge, raw_client, mechanism):
    client = raw_client(auth_edge.address)
    client.ehlo()
    client.send(b"AUTH " + mechanism + b" " + _b64(b"\0alice\0plain-pw") + b"\r\n")
    text = client.expect(538)
    assert b"5.7.11" in text
    assert "auth" not in auth_edge.hooks()


def test_plain_refused_in_cleartext_via_smtplib(auth_edge):
    with smtplib.SMTP("127.0.0.1", auth_edge.port, timeout=5) as client:
        client.ehlo("client.test")
        client.esmtp_features["auth"] = "PLAIN"
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("alice", "plain-pw")
        assert info.value.smtp_code == 538


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize(("user", "password"), [("alice", "plain-pw"), ("bob", "hashed-pw")])
def test_login_after_starttls(auth_edge, client_context, mechanism, user, password):
    with _tls_smtp(auth_edge, client_context) as client:
        client.esmtp_features["auth"] = mechanism
        if mechanism == "CRAM-MD5" and user == "bob":
            # CRAM-MD5 needs the password itself; a stored hash never matches.
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login(user, password)
            assert info.value.smtp_code == 535
            return
        code, _ = client.login(user, password)
        assert code == 235
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    (env,) = auth_edge.queue.envelopes
    assert env.client["protocol"] == "ESMTPSA"
    assert env.client["auth"] == user
    (auth_call,) = [c for c in auth_edge.calls if c[0] == "auth"]
    assert auth_call[2].mechanism == mechanism


def test_cram_md5_in_cleartext(auth_edge):
    with smtplib.SMTP("127.0.0.1", auth_edge.port, timeout=5) as client:
        client.ehlo("client.test")
        client.esmtp_features["auth"] = "CRAM-MD5"
        assert client.login("alice", "plain-pw")[0] == 235
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    assert auth_edge.queue.envelopes[0].client["protocol"] == "ESMTPA"


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_wrong_password_535(auth_edge, client_context, mechanism):
    with _tls_smtp(auth_edge, client_context) as client:
        client.esmtp_features["auth"] = mechanism
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("alice", "wrong")
        assert info.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("nobody", "plain-pw")


class NoAuthHook(SmtpValidators):
    pass


@pytest.mark.parametrize("validator_class", [None, NoAuthHook])
def test_no_handle_auth_fails_closed(edge_factory, stdlib_server_context, client_context, validator_class):
    edge = edge_factory(context=stdlib_server_context, auth=True, validator_class=validator_class)
    for mechanism in ("PLAIN", "LOGIN", "CRAM-MD5"):
        with _tls_smtp(edge, client_context) as client:
            client.esmtp_features["auth"] = mechanism
            with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                client.login("alice", "plain-pw")
            assert info.value.smtp_code == 535


def _tls_raw(edge, raw_client, client_context):
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    client.expect(220)
    client.starttls(client_context)
    client.ehlo()
    return client


def test_two_failures_then_success(auth_edge, raw_client, client_context):
    client = _tls_raw(auth_edge, raw_client, client_context)
    bad = b"AUTH PLAIN " + _b64(b"\0alice\0nope") + b"\r\n"
    client.send(bad + bad)
    assert client.codes(2) == [535, 535]
    client.send(b"AUTH PLAIN " + _b64(b"\0alice\0plain-pw") + b"\r\n")
    assert client.reply()[0] == 235
    client.send(b"NOOP\r\n")
    assert client.reply()[0] == 250


def test_three_failures_421_and_close(auth_edge, raw_client, client_context):
    client = _tls_raw(auth_edge, raw_client, client_context)
    bad = b"AUTH PLAIN " + _b64(b"\0alice\0nope") + b"\r\n"
    client.send(bad * 3 + b"NOOP\r\n")
    assert client.codes(4) == [535, 535, 535, 421]
    assert client.closed_by_server()
    assert client.buf == b""


def test_cram_md5_failures_count_too(auth_edge, raw_client):
    client = raw_client(auth_edge.address)
    client.ehlo()
    for _attempt in range(3):
        client.send(b"AUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(client.expect(334)[4:].strip())
        digest = hmac.new(b"wrong", challenge, hashlib.md5).hexdigest().encode()
        client.send(_b64(b"alice " + digest) + b"\r\n")
        assert client.reply()[0] == 535
    assert client.reply()[0] == 421
    assert client.closed_by_server()


def test_session_auth_tuple_with_authzid(edge_factory, stdlib_server_context, raw_client, client_context):
    seen = []
    edge = edge_factory(
        context=stdlib_server_context,
        auth=True,
        overrides={
            "auth": check_users,
            "mail": lambda self, reply, sender, params: seen.append(self.session.auth),
        },
    )
    client = _tls_raw(edge, raw_client, client_context)
    client.send(b"AUTH PLAIN " + _b64(b"admin\0alice\0plain-pw") + b"\r\n")
    client.expect(235)
    client.send(b"AUTH PLAIN " + _b64(b"\0alice\0plain-pw") + b"\r\n")
    client.expect(503)  # already authenticated
    client.send(b"MAIL FROM:<a@src.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n")
    assert client.codes(3) == [250, 250, 354]
    client.send(MESSAGE + b".\r\n")
    client.expect(250)
    assert seen == [("alice", "admin")]
    assert edge.queue.envelopes[0].client["auth"] == "alice"


def test_stalled_auth_login_times_out(edge_factory, stdlib_server_context, raw_client, client_context):
    edge = edge_factory(
        context=stdlib_server_context, auth=True, overrides={"auth": check_users}, command_timeout=0.5
    )
    client = _tls_raw(edge, raw_client, client_context)
    client.send(b"AUTH LOGIN\r\n")
    client.expect(334)
    start = time.monotonic()
    code, text = client.reply()
    assert code == 421
    assert b"4.4.2" in text
    assert client.closed_by_server()
    assert time.monotonic() - start < 0.5 + 1


def test_auth_cancel(auth_edge, raw_client, client_context):
    client = _tls_raw(auth_edge, raw_client, client_context)
    client.send(b"AUTH LOGIN\r\n")
    client.expect(334)
    client.send(b"*\r\nNOOP\r\n")
    assert client.codes(2) == [501, 250]


def test_hash_verification_does_not_stall_other_sessions(edge_factory, client_context, stdlib_server_context):
    import gevent

    # A hash at default rounds costs ~0.4 s to verify: the server must do it
    # off the hub, or every session stalls during each AUTH attempt.
    costly = {"carol": sha512_crypt.hash("pw")}

    def check(self, reply, creds):
        start = time.monotonic()
        if not creds.check_secret(costly.get(creds.authcid)):
            reply.code = "535"
        spent.append(time.monotonic() - start)

    spent = []
    edge = edge_factory(context=stdlib_server_context, auth=True, overrides={"auth": check})
    ticks = []

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    tick = gevent.spawn(ticker)
    try:
        with _tls_smtp(edge, client_context) as client:
            client.esmtp_features["auth"] = "PLAIN"
            assert client.login("carol", "pw")[0] == 235
    finally:
        tick.kill()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert spent[0] > 0.1  # the verification is costly ...
    assert max(gaps) < 0.1, (max(gaps), len(ticks))  # ... but must not stall the hub
